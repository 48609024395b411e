import Foundation
import TensorStream

/// Architecture of a velocity network, serialised as JSON into checkpoint metadata key `config`.
/// One struct serves every architecture; fields an architecture does not use are ignored by it.
///
/// Time: the toolkit's t in [0, 1] (t = 1 noise) is multiplied by `timeScale` before DiT's
/// sinusoidal timestep embedding (default 1000, the diffusers/SD3 convention of 1000 * sigma, so
/// the 256 frequencies resolve small time differences; SiT itself feeds raw t, i.e. timeScale 1).
public struct ModelConfig: Codable, Equatable, Sendable {
    /// "mlp", "sit" or "unet".
    public var arch: String
    public var channels: Int
    public var height: Int
    public var width: Int
    /// Number of real classes; label id `numClasses` is the null label (classifier-free guidance),
    /// so label tables have numClasses + 1 rows.
    public var numClasses: Int
    /// Hidden width of the residual stream (unet: the channels of the first level).
    public var hidden: Int
    /// Blocks (unet: residual blocks per level on each side).
    public var depth: Int
    /// MLP hidden = Int(hidden * mlpRatio) (mlp, sit; unet: the conditioning width).
    public var mlpRatio: Double
    /// sit only: attention heads and patch size.
    public var heads: Int
    public var patch: Int
    public var timeScale: Float
    /// Dimension of the sinusoidal time features (DiT: 256).
    public var frequencyDim: Int
    /// unet only: channels of level l are hidden * channelMult[l] (one level per entry, each
    /// after the first at half the resolution), and the GroupNorm group count. Optional so
    /// that the JSON of the other architectures does not change; nil reads as the defaults.
    public var channelMult: [Int]?
    public var groups: Int?

    public init(arch: String, channels: Int = 1, height: Int = 28, width: Int = 28, numClasses: Int = 10,
                hidden: Int, depth: Int, mlpRatio: Double = 4, heads: Int = 4, patch: Int = 4,
                timeScale: Float = 1000, frequencyDim: Int = 256, channelMult: [Int]? = nil, groups: Int? = nil) {
        self.arch = arch
        self.channels = channels
        self.height = height
        self.width = width
        self.numClasses = numClasses
        self.hidden = hidden
        self.depth = depth
        self.mlpRatio = mlpRatio
        self.heads = heads
        self.patch = patch
        self.timeScale = timeScale
        self.frequencyDim = frequencyDim
        self.channelMult = channelMult
        self.groups = groups
    }

    enum CodingKeys: String, CodingKey {
        case arch, channels, height, width, depth, heads, patch
        case numClasses = "num_classes", hidden = "hidden_size", mlpRatio = "mlp_ratio"
        case timeScale = "time_scale", frequencyDim = "frequency_embedding_size"
        case channelMult = "channel_mult", groups
    }

    /// Image shape, classes, width and depth are required; the rest default as in `init`.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        arch = try c.decode(String.self, forKey: .arch)
        channels = try c.decode(Int.self, forKey: .channels)
        height = try c.decode(Int.self, forKey: .height)
        width = try c.decode(Int.self, forKey: .width)
        numClasses = try c.decode(Int.self, forKey: .numClasses)
        hidden = try c.decode(Int.self, forKey: .hidden)
        depth = try c.decode(Int.self, forKey: .depth)
        mlpRatio = try c.decodeIfPresent(Double.self, forKey: .mlpRatio) ?? 4
        heads = try c.decodeIfPresent(Int.self, forKey: .heads) ?? 4
        patch = try c.decodeIfPresent(Int.self, forKey: .patch) ?? 4
        timeScale = try c.decodeIfPresent(Float.self, forKey: .timeScale) ?? 1000
        frequencyDim = try c.decodeIfPresent(Int.self, forKey: .frequencyDim) ?? 256
        channelMult = try c.decodeIfPresent([Int].self, forKey: .channelMult)
        groups = try c.decodeIfPresent(Int.self, forKey: .groups)
    }

    public var sampleDimension: Int { channels * height * width }
    public var mlpHidden: Int { Int(Double(hidden) * mlpRatio) }
    /// unet: per-level channel multipliers (default [1, 2, 4]) and GroupNorm groups (default 8).
    public var levelMultipliers: [Int] { channelMult ?? [1, 2, 4] }
    public var groupCount: Int { groups ?? 8 }

    /// Named sizes for 28x28 single-channel images (Fashion-MNIST); change channels/height/width
    /// for other data.
    public static func named(_ name: String, channels: Int = 1, height: Int = 28, width: Int = 28, numClasses: Int = 10) -> ModelConfig? {
        switch name {
        case "sit-tiny":
            return ModelConfig(arch: "sit", channels: channels, height: height, width: width, numClasses: numClasses,
                               hidden: 128, depth: 4, mlpRatio: 4, heads: 4, patch: 4)
        case "sit-small":
            return ModelConfig(arch: "sit", channels: channels, height: height, width: width, numClasses: numClasses,
                               hidden: 256, depth: 6, mlpRatio: 4, heads: 4, patch: 4)
        case "mlp-tiny":
            return ModelConfig(arch: "mlp", channels: channels, height: height, width: width, numClasses: numClasses,
                               hidden: 256, depth: 3, mlpRatio: 2)
        case "mlp-small":
            return ModelConfig(arch: "mlp", channels: channels, height: height, width: width, numClasses: numClasses,
                               hidden: 512, depth: 4, mlpRatio: 2)
        case "unet-tiny":
            return ModelConfig(arch: "unet", channels: channels, height: height, width: width, numClasses: numClasses,
                               hidden: 32, depth: 1, mlpRatio: 4, channelMult: [1, 2, 4], groups: 8)
        default:
            return nil
        }
    }

    public static let names = ["mlp-tiny", "mlp-small", "sit-tiny", "sit-small", "unet-tiny"]

    /// Checks the configuration is buildable; the error is one line.
    public func validate() throws {
        func bad(_ why: String) -> StreamError { .invalid("model config: \(why)") }
        guard arch == "mlp" || arch == "sit" || arch == "unet" else { throw bad("unknown arch `\(arch)` (expected mlp, sit or unet)") }
        guard channels > 0, height > 0, width > 0 else { throw bad("image shape must be positive") }
        guard numClasses >= 0, hidden > 0, depth >= 0, mlpRatio > 0, mlpHidden > 0 else { throw bad("sizes must be positive") }
        guard frequencyDim > 0, frequencyDim % 2 == 0 else { throw bad("frequency_embedding_size must be even") }
        guard timeScale.isFinite else { throw bad("time_scale must be finite") }
        if arch == "sit" {
            guard patch > 0, height % patch == 0, width % patch == 0 else { throw bad("image \(height)x\(width) is not divisible into \(patch)x\(patch) patches") }
            guard height == width else { throw bad("sit needs a square image for its 2-D positional embedding") }
            guard heads > 0, hidden % heads == 0 else { throw bad("hidden_size \(hidden) not divisible by \(heads) heads") }
            guard hidden % 4 == 0 else { throw bad("hidden_size must be divisible by 4 for the sin-cos positional embedding") }
        }
        if arch == "unet" {
            let mult = levelMultipliers, g = groupCount
            guard !mult.isEmpty, mult.allSatisfy({ $0 > 0 }) else { throw bad("channel_mult must be a non-empty list of positive integers") }
            guard depth >= 1 else { throw bad("unet needs depth >= 1 (residual blocks per level)") }
            guard g > 0, mult.allSatisfy({ (hidden * $0) % g == 0 }) else { throw bad("the level widths \(mult.map { hidden * $0 }) are not divisible into \(g) groups") }
            let f = 1 << (mult.count - 1)
            guard height % f == 0, width % f == 0 else { throw bad("image \(height)x\(width) cannot be halved \(mult.count - 1) times (\(mult.count) levels)") }
        }
    }

    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try! enc.encode(self), as: UTF8.self)
    }

    public static func from(json: String) throws -> ModelConfig {
        do {
            let c = try JSONDecoder().decode(ModelConfig.self, from: Data(json.utf8))
            try c.validate()
            return c
        } catch let e as StreamError {
            throw e
        } catch {
            throw StreamError.invalid("model config is not valid JSON for a model: \(error)")
        }
    }
}
