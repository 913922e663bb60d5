/// How matrix products with quantized (ggml block) weights compute.
public enum ComputeMode: String, Sendable, CaseIterable {
    /// Weights expanded to f32, products in f32: equal to transformers up to summation order.
    case f32
    /// Inputs quantized to 8 bits per 32 values and multiplied with integer dot products
    /// (llama.cpp's method for quantized models): several times the multiply-adds per
    /// instruction, at the cost of the inputs' rounding (≤ 1/254 of each block's largest value).
    case int8
}
