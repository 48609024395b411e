import TensorStream

/// The single place tools turn an encoder reference into a `FeatureEncoder`, so the trained
/// encoders plug in by adding their kinds here.
public enum Encoders {
    /// `pixels` (identity features of `inputShape`), or a checkpoint path whose metadata names
    /// its kind. Unknown kinds are refused.
    public static func load(path: String, inputShape: [Int]? = nil) throws -> FeatureEncoder {
        if path == "pixels" {
            guard let inputShape else { throw FeatureError("pixel features need the image shape, which is unknown here") }
            return PixelEncoder(inputShape: inputShape)
        }
        let bytes = try readFile(path)
        let record: Record
        do {
            record = try RecordCodec.decode(bytes)
        } catch let error as StreamError {
            throw StreamError.invalid("\(path) is not a valid safetensors checkpoint: \(error)")
        }
        // Pretrained standard encoders (scripts/convert_weights.py) resize any grey or RGB image.
        switch record.metadata["arch"] {
        case InceptionFIDEncoder.arch?:
            return try InceptionFIDEncoder(record: record, digest: SHA256.hex(bytes), inputShape: inputShape, path: path)
        case DINOv2Encoder.arch?:
            return try DINOv2Encoder(record: record, digest: SHA256.hex(bytes), inputShape: inputShape, path: path)
        default:
            break
        }
        // Trained CNN encoders (`embed train`) carry their EncoderConfig as JSON in `config`.
        if let json = record.metadata["config"], let config = try? EncoderConfig.from(json: json),
           ["classifier", "simclr"].contains(config.kind) {
            let enc = try ConvEncoder.load(path: path)
            if let inputShape, inputShape != enc.inputShape {
                throw FeatureError("encoder \(path) expects images of shape \(enc.inputShape), not \(inputShape)")
            }
            return enc
        }
        let kind = record.metadata["kind"] ?? record.metadata["arch"] ?? "(none)"
        throw FeatureError("\(path): encoder kind `\(kind)` is not known to this build (known: pixels, classifier, simclr, \(InceptionFIDEncoder.arch), \(DINOv2Encoder.arch))")
    }

    /// The encoder a discriminator was trained with: pixels when its digest is "pixels", else
    /// the checkpoint at `path`, whose digest must match.
    public static func resolve(digest: String, path: String?, inputShape: [Int]) throws -> FeatureEncoder {
        if digest == "pixels" && (path == nil || path == "pixels") { return PixelEncoder(inputShape: inputShape) }
        guard let path else {
            throw FeatureError("the discriminator was trained on features of encoder \(digest); pass that encoder with {encoder}")
        }
        let enc = try load(path: path, inputShape: inputShape)
        guard enc.digest == digest else {
            throw FeatureError("encoder \(path) has digest \(enc.digest), but the discriminator was trained on encoder \(digest)")
        }
        return enc
    }
}

/// Encoders that can push a tangent forward (J u). The R1 penalty's parameter gradient needs
/// J J^T g; encoders without it get a central finite difference of `features`.
public protocol FeatureJVPEncoder: FeatureEncoder {
    func featureJVP(_ x: UnsafePointer<Float>, batch: Int, tangent u: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>)
}

extension PixelEncoder: FeatureJVPEncoder {
    public func featureJVP(_ x: UnsafePointer<Float>, batch: Int, tangent u: UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>) {
        out.update(from: u, count: batch * featureDimension)
    }
}

extension Encoders {
    /// out[b] = J(x[b]) u[b]: exact when the encoder has a JVP, else (phi(x + e u) - phi(x - e u)) / 2e
    /// with e = 1e-3 (max|x| + 1) / max|u| per sample.
    public static func jvp(_ enc: FeatureEncoder, x: [Float], tangent u: [Float], batch: Int) -> [Float] {
        let D = enc.featureDimension, P = enc.inputShape.reduce(1, *)
        var out = [Float](repeating: 0, count: batch * D)
        if let j = enc as? FeatureJVPEncoder {
            x.withUnsafeBufferPointer { xp in u.withUnsafeBufferPointer { up in out.withUnsafeMutableBufferPointer {
                j.featureJVP(xp.baseAddress!, batch: batch, tangent: up.baseAddress!, into: $0.baseAddress!) } } }
            return out
        }
        var plus = x, minus = x
        var eps = [Float](repeating: 0, count: batch)
        for b in 0..<batch {
            var mx: Float = 0, mu: Float = 0
            for i in 0..<P { mx = max(mx, abs(x[b * P + i])); mu = max(mu, abs(u[b * P + i])) }
            let e = mu > 0 ? 1e-3 * (mx + 1) / mu : 0
            eps[b] = e
            for i in 0..<P { plus[b * P + i] += e * u[b * P + i]; minus[b * P + i] -= e * u[b * P + i] }
        }
        var fp = out, fm = out
        plus.withUnsafeBufferPointer { p in fp.withUnsafeMutableBufferPointer { enc.features(p.baseAddress!, batch: batch, into: $0.baseAddress!) } }
        minus.withUnsafeBufferPointer { p in fm.withUnsafeMutableBufferPointer { enc.features(p.baseAddress!, batch: batch, into: $0.baseAddress!) } }
        for b in 0..<batch where eps[b] > 0 {
            for i in 0..<D { out[b * D + i] = (fp[b * D + i] - fm[b * D + i]) / (2 * eps[b]) }
        }
        return out
    }

    public static func features(_ enc: FeatureEncoder, x: [Float], batch: Int) -> [Float] {
        var out = [Float](repeating: 0, count: batch * enc.featureDimension)
        guard batch > 0 else { return out }
        x.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { enc.features(p.baseAddress!, batch: batch, into: $0.baseAddress!) } }
        return out
    }

    public static func vjp(_ enc: FeatureEncoder, x: [Float], cotangent g: [Float], batch: Int) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        guard batch > 0 else { return out }
        x.withUnsafeBufferPointer { p in g.withUnsafeBufferPointer { gp in out.withUnsafeMutableBufferPointer {
            enc.featureVJP(p.baseAddress!, batch: batch, cotangent: gp.baseAddress!, into: $0.baseAddress!) } } }
        return out
    }
}
