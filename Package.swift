// swift-tools-version:6.0
import PackageDescription

// Layers, each depending only on those above it:
//   CQwenKernels (C: OpenBLAS loader, CPU features, block / int8 / attention / LoRA kernels)
//   QwenKernels  (buffers, BLAS, element-wise kernels, weight matrices)
//   QwenFormats  (safetensors, GGUF, block dequantization)
//   QwenModel    (config, weights, the Qwen2/Qwen3 forward pass, KV cache)
//   QwenTokenizer(byte-level BPE, pre-tokenizer, added tokens)
//   QwenChat     (JSON that keeps key order, the Jinja chat-template engine, output parsing)
//   QwenGrammar  (constrained decoding: JSON Schema / regex / tool-call grammars, token masks)
//   QwenRuntime  (model resolution and download, sampling, generation)
//   QwenEngine   (continuous batching over the paged KV cache)
//   QwenTraining (LoRA fine-tuning: configuration, data, the training loop, adapter files)
//   QwenServer   (the OpenAI-compatible HTTP API on Hummingbird)
//   QwenDaemon   (systemd notification, configuration)
//   qwen-serve   (the command line)
// Unchecked arithmetic only where the numbers are the kernels' own (buffers and products):
// every target that reads requests, files or templates keeps Swift's bounds and overflow
// checks, and the engine keeps its preconditions.
let unsafeFlags: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]
// QWEN_FUZZ=1 (make fuzz) builds qwen-fuzz as a libFuzzer target: libFuzzer supplies main.
let fuzzing = Context.environment["QWEN_FUZZ"] != nil
let fuzzSettings: [SwiftSetting] = fuzzing ? [.define("FUZZING")] : []

let package = Package(
    name: "qwen-serve",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "qwen-serve", targets: ["qwen-serve"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.27.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.24.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/vapor/multipart-kit", from: "4.7.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.21.0"),
    ],
    targets: [
        .target(
            name: "CQwenKernels",
            cSettings: [.unsafeFlags(["-O3", "-ffast-math", "-fno-finite-math-only"])],
            linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]
        ),
        .target(name: "QwenKernels", dependencies: ["CQwenKernels"], swiftSettings: unsafeFlags),
        .target(name: "QwenFormats", dependencies: ["CQwenKernels", "QwenKernels"]),
        .target(name: "QwenModel", dependencies: ["CQwenKernels", "QwenKernels", "QwenFormats"]),
        .target(name: "QwenTokenizer", dependencies: ["QwenFormats"]),
        .target(name: "QwenChat"),
        .target(name: "QwenGrammar", dependencies: ["QwenChat"]),
        .target(
            name: "QwenRuntime",
            dependencies: ["QwenKernels", "QwenFormats", "QwenModel", "QwenTokenizer"]
        ),
        .target(name: "QwenEngine", dependencies: ["QwenModel", "QwenTokenizer", "QwenRuntime", "QwenGrammar"]),
        // LoRA fine-tuning: mlx_lm.lora's configuration and data, the training loop, adapter files.
        .target(name: "QwenTraining", dependencies: ["QwenModel", "QwenTokenizer", "QwenChat", "QwenRuntime", "QwenFormats",
                                                     .product(name: "Yams", package: "Yams")]),
        .target(
            name: "QwenServer",
            dependencies: ["QwenChat", "QwenGrammar", "QwenEngine", "QwenRuntime", "QwenTokenizer", "QwenTraining", .product(name: "Hummingbird", package: "hummingbird"),
                           .product(name: "GRDB", package: "GRDB.swift"), .product(name: "MultipartKit", package: "multipart-kit"),
                           .product(name: "PostgresNIO", package: "postgres-nio"),
                           .product(name: "HummingbirdCore", package: "hummingbird"), .product(name: "HummingbirdTLS", package: "hummingbird"),
                           .product(name: "NIOSSL", package: "swift-nio-ssl"), .product(name: "Logging", package: "swift-log"),
                           .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                           .product(name: "NIOExtras", package: "swift-nio-extras"), .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                           .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                           .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")],
            // The web console's files, compiled into the binary: nothing to install beside it.
            resources: [.embedInCode("Console/web")]
        ),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .target(name: "QwenDaemon", dependencies: ["CSystemd", "QwenFormats", .product(name: "Logging", package: "swift-log")]),
        .executableTarget(
            name: "qwen-serve",
            dependencies: [
                "QwenFormats", "QwenRuntime", "QwenServer", "QwenDaemon", "QwenTokenizer", "QwenChat", "QwenGrammar", "QwenTraining",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The parsers' fuzz entry points, and the libFuzzer driver / replayer (make fuzz).
        .target(name: "QwenFuzzTargets", dependencies: ["QwenFormats", "QwenModel", "QwenTokenizer", "QwenChat", "QwenGrammar"]),
        .executableTarget(name: "qwen-fuzz", dependencies: ["QwenFuzzTargets"], swiftSettings: fuzzSettings),
        .testTarget(
            name: "QwenTests",
            dependencies: ["QwenFuzzTargets", "QwenKernels", "QwenFormats", "QwenModel", "QwenTokenizer", "QwenChat", "QwenGrammar", "QwenRuntime", "QwenEngine", "QwenServer", "QwenTraining",
                           .product(name: "Logging", package: "swift-log")]
        ),
    ],
    swiftLanguageModes: [.v5]
)
