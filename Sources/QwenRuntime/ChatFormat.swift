/// ChatML, the turn format Qwen models are trained on. The model's own Jinja template
/// renders chats in the server; this is the command line's plain fallback.
public enum ChatFormat {
    public static func chatML(user: String, system: String? = nil) -> String {
        var s = ""
        if let system { s += "<|im_start|>system\n\(system)<|im_end|>\n" }
        s += "<|im_start|>user\n\(user)<|im_end|>\n<|im_start|>assistant\n"
        return s
    }
}
