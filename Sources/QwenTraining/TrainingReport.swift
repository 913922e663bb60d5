import Foundation
import QwenFormats

/// metrics.csv and loss.svg next to the adapter: the run's curve, rewritten (atomically) at
/// every report so a run in progress can be watched.
public enum TrainingReport {
    public static func csv(_ rows: [MetricsRow]) -> String {
        func f(_ v: Double?) -> String { v.map { String(format: "%.6g", $0) } ?? "" }
        var s = "step,train_loss,val_loss,learning_rate,trained_tokens_per_second,tokens_per_second\n"
        for r in rows {
            s += "\(r.step),\(f(r.trainLoss)),\(f(r.valLoss)),\(f(r.learningRate)),\(f(r.tokensPerSecond)),\(f(r.inputTokensPerSecond))\n"
        }
        return s
    }

    /// Train and validation loss against the step, as an SVG line chart.
    public static func svg(_ rows: [MetricsRow]) -> String {
        let w = 640.0, h = 360.0, left = 56.0, right = 16.0, top = 20.0, bottom = 40.0
        let train = rows.compactMap { r in r.trainLoss.map { (Double(r.step), $0) } }
        let val = rows.compactMap { r in r.valLoss.map { (Double(r.step), $0) } }
        let all = train + val
        let maxStep = max(1, all.map(\.0).max() ?? 1)
        let lo = min(all.map(\.1).min() ?? 0, all.map(\.1).max() ?? 1), hiRaw = all.map(\.1).max() ?? 1
        let hi = hiRaw > lo ? hiRaw : lo + 1
        func x(_ s: Double) -> Double { left + s / maxStep * (w - left - right) }
        func y(_ v: Double) -> Double { top + (hi - v) / (hi - lo) * (h - top - bottom) }
        func line(_ pts: [(Double, Double)], _ color: String) -> String {
            guard !pts.isEmpty else { return "" }
            let p = pts.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            return "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(p)\"/>"
                + pts.map { String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"\(color)\"/>", x($0.0), y($0.1)) }.joined()
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#888\"/>", left, h - bottom, w - right, h - bottom)
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"#888\"/>", left, top, left, h - bottom)
        for k in 0...4 {
            let v = lo + (hi - lo) * Double(k) / 4
            s += String(format: "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>", left - 6, y(v) + 4, v)
        }
        s += String(format: "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">iteration (0–%d)</text>", (left + w - right) / 2, h - 10, Int(maxStep))
        s += line(train, "#1f77b4") + line(val, "#d62728")
        s += String(format: "<text x=\"%.0f\" y=\"14\" fill=\"#1f77b4\">train loss</text><text x=\"%.0f\" y=\"14\" fill=\"#d62728\">val loss</text>", left + 10, left + 100)
        return s + "</svg>\n"
    }

    public static func write(_ rows: [MetricsRow], to dir: String) throws {
        try AtomicFile.write(Data(csv(rows).utf8), to: (dir as NSString).appendingPathComponent("metrics.csv"))
        try AtomicFile.write(Data(svg(rows).utf8), to: (dir as NSString).appendingPathComponent("loss.svg"))
    }
}
