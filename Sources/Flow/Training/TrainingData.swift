import Foundation
import TensorStream

/// A labelled data set held in memory: images `x` [N, C, H, W] (float32) and labels `y` [N],
/// read once from a tensor stream (e.g. `tensors from-idx`). 60k Fashion-MNIST images are
/// 188 MB as float32, well within the machine; the trainer samples minibatches from it.
public struct TrainingData {
    public var x: [Float]
    public var y: [Int]
    public var channels: Int
    public var height: Int
    public var width: Int
    public var count: Int { y.count }
    public var sampleDimension: Int { channels * height * width }

    public init(x: [Float], y: [Int], channels: Int, height: Int, width: Int) {
        precondition(x.count == y.count * channels * height * width)
        self.x = x
        self.y = y
        self.channels = channels
        self.height = height
        self.width = width
    }

    /// Reads every record of a stream. Each record must hold `x` [B,C,H,W] (any float dtype,
    /// converted to float32) and `y` [B] (any integer dtype); all records share C, H, W. Values
    /// must be finite. Errors are one line and name the record.
    public static func read(_ reader: TensorStreamReader, tool: String = "train") throws -> TrainingData {
        var xs: [Float] = []
        var ys: [Int] = []
        var shape: [Int]?
        var index = 0
        while let record = try reader.read() {
            defer { index += 1 }
            let xt = try record.require("x", by: tool)
            let yt = try record.require("y", by: tool)
            guard xt.shape.count == 4 else {
                throw FlowError("record \(index): `x` has shape \(xt.shape); \(tool) needs images [B,C,H,W]")
            }
            guard yt.shape == [xt.shape[0]] else {
                throw FlowError("record \(index): `y` has shape \(yt.shape) but `x` holds \(xt.shape[0]) samples")
            }
            let s = Array(xt.shape.dropFirst())
            if let shape, shape != s {
                throw FlowError("record \(index): images are \(s.map(String.init).joined(separator: "x")) but earlier ones are \(shape.map(String.init).joined(separator: "x"))")
            }
            shape = s
            let values: [Float]
            do { values = try xt.floats() } catch { throw FlowError("record \(index): `x` is \(xt.dtype.rawValue), not a float tensor") }
            if let bad = values.firstIndex(where: { !$0.isFinite }) {
                throw FlowError("record \(index): `x` holds a non-finite value (\(values[bad])) at element \(bad)")
            }
            let labels: [Int64]
            do { labels = try yt.int64s() } catch { throw FlowError("record \(index): `y` is \(yt.dtype.rawValue), not an integer tensor") }
            xs.append(contentsOf: values)
            ys.append(contentsOf: labels.map { Int($0) })
        }
        guard let shape, !ys.isEmpty else { throw FlowError("the training stream holds no samples") }
        return TrainingData(x: xs, y: ys, channels: shape[0], height: shape[1], width: shape[2])
    }

    /// Checks the data fits a model: same image shape, labels in 0..<numClasses.
    public func check(against config: ModelConfig) throws {
        guard (channels, height, width) == (config.channels, config.height, config.width) else {
            throw FlowError("the data holds \(channels)x\(height)x\(width) images but the model takes \(config.channels)x\(config.height)x\(config.width)")
        }
        if let bad = y.first(where: { $0 < 0 || $0 >= config.numClasses }) {
            throw FlowError("label \(bad) is outside 0..<\(config.numClasses) (the model has \(config.numClasses) classes; \(config.numClasses) is reserved for the null label)")
        }
    }
}
