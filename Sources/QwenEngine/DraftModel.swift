import Foundation
import QwenModel
import QwenRuntime
import QwenTokenizer

/// Drafting with a second, smaller model of the same vocabulary (`--draft-model`, e.g. Qwen3-0.6B
/// for Qwen3-8B): it proposes its greedy continuation, which the target verifies as it verifies
/// prompt-lookup drafts (a one-hot draft: the output is the target's, token for token and in
/// distribution).
///
/// Each sequence has a KV cache in the draft model's own paged pool (bounded in size), holding the sequence's
/// tokens and the drafts of its last proposal. A proposal first rolls the cache back to what the
/// sequence kept, then feeds the tokens the draft model has not seen (the prompt at first; after
/// that the kept drafts and the target's own next token) and runs one draft step per token
/// proposed. Engine thread only.
public final class DraftModel {
    public let model: QwenModel
    let pool: KVPool
    private var caches: [ObjectIdentifier: KVCache] = [:]

    /// `blocks`: the most the pool may hold (the engine gives it as many positions as the served
    /// model's cache holds, in the draft model's rows). It starts small and grows as sequences draft,
    /// so memory follows use and never passes that bound.
    public init(model: QwenModel, blocks: Int, blockSize: Int = 16, dtype: KVCacheDType = .f32) {
        self.model = model
        pool = KVPool(config: model.config, blocks: min(16, max(1, blocks)), blockSize: blockSize, growable: true,
                      maxBlocks: max(1, blocks), dtype: dtype)
    }

    /// Up to `count` tokens the draft model would write greedily after `tokens`.
    /// `vocabulary`: ids the target has (a draft id beyond it ends the draft).
    public func propose(for key: ObjectIdentifier, tokens: [Int32], count: Int, vocabulary: Int) -> [Int32] {
        guard count > 0, !tokens.isEmpty, tokens.count + count <= model.config.maxPositions else { return [] }
        let cache = caches[key] ?? KVCache(pool: pool)
        caches[key] = cache
        // Keep what the sequence kept: the longest common prefix, leaving one token to feed.
        let seen = cache.filledTokens
        var common = 0
        let limit = min(seen.count, tokens.count - 1)
        while common < limit && seen[common] == tokens[common] { common += 1 }
        cache.rollback(to: common)
        var feed = Array(tokens[common...])
        var out: [Int32] = []
        do {
            while out.count < count {
                guard cache.reserve(feed.count) else {
                    // The draft pool is full: this sequence gives its cache back and drafts nothing
                    // now (it starts over when there is room).
                    forget(key)
                    return []
                }
                let rows = try model.compute([QwenModel.Item(cache: cache, tokens: feed, logits: .last)])
                cache.advance(feed)
                guard let row = rows.first, !row.isEmpty else { break }
                let next = Sampler.argmax(row)
                guard next < vocabulary else { break }
                out.append(next)
                feed = [next]
            }
        } catch {
            // A draft is only a guess: without one the target decodes as it would anyway.
            forget(key)
            return []
        }
        return out
    }

    /// The sequence ended: its draft cache goes back to the pool.
    public func forget(_ key: ObjectIdentifier) {
        caches[key]?.free()
        caches[key] = nil
    }

    /// Sequences holding a draft cache (tests).
    public var sequences: Int { caches.count }
}

/// Whether a draft model's tokenizer is the served model's: every id must stand for the same
/// bytes, or the target would verify tokens the draft did not mean.
public enum DraftCheck {
    /// What differs, or nil when the two tokenizers agree on every id.
    public static func mismatch(draft: Tokenizer, target: Tokenizer) -> String? {
        guard draft.vocabularySize == target.vocabularySize else {
            return "its vocabulary has \(draft.vocabularySize) tokens, the served model's \(target.vocabularySize)"
        }
        if let i = draft.tokenBytes.indices.first(where: { draft.tokenBytes[$0] != target.tokenBytes[$0] }) {
            return "token \(i) is \(String(decoding: draft.tokenBytes[i], as: UTF8.self).debugDescription) there and \(String(decoding: target.tokenBytes[i], as: UTF8.self).debugDescription) here"
        }
        let a = draft.addedTokens.map { "\($0.id):\($0.content)" }, b = target.addedTokens.map { "\($0.id):\($0.content)" }
        guard a == b else { return "its special tokens differ" }
        return nil
    }
}
