import ArgumentParser
import Shared

extension Tensors {
    struct FromIDX: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "from-idx",
            abstract: "Convert MNIST/Fashion-MNIST IDX files (gzipped or plain) to a stream of `x`, `y` and `id`.",
            discussion: """
            Images become `x` F32 [B,1,H,W] in [-1,1] (v / 127.5 - 1), labels `y` I64 [B], and `id` I64 [B]
            the index of each image in the file.
              D=/usr/share/datasets/fashion-mnist
              tensors from-idx $D/train-images-idx3-ubyte.gz $D/train-labels-idx1-ubyte.gz > train.tzst
            """)

        @Argument(help: "IDX image file ([N,H,W] unsigned bytes).")
        var images: String

        @Argument(help: "IDX label file ([N] unsigned bytes), optional.")
        var labels: String?

        @Option(help: "Samples per record.")
        var batch: Int = 1000

        @OptionGroup var output: OutputOptions

        func validate() throws {
            guard batch > 0 else { throw ValidationError("--batch must be positive") }
        }

        func run() throws {
            let imageFile = try IDXFile(path: images)
            guard imageFile.shape.count == 3 || imageFile.shape.count == 4 else {
                throw ToolError("\(images) holds shape \(imageFile.shape), not images [N,H,W]")
            }
            let n = imageFile.shape[0]
            let (c, h, w) = imageFile.shape.count == 3 ? (1, imageFile.shape[1], imageFile.shape[2])
                                                        : (imageFile.shape[3], imageFile.shape[1], imageFile.shape[2])
            var labelBytes: [UInt8]?
            if let labels {
                let labelFile = try IDXFile(path: labels)
                guard labelFile.shape == [n] else {
                    throw ToolError("\(labels) holds shape \(labelFile.shape) but \(images) has \(n) images")
                }
                labelBytes = labelFile.bytes
            }
            let writer = try output.writer()
            let per = c * h * w
            var start = 0
            while start < n {
                let b = min(batch, n - start)
                var x = [Float](repeating: 0, count: b * per)
                imageFile.bytes.withUnsafeBufferPointer { src in
                    for i in 0..<b {
                        let base = (start + i) * per
                        for ch in 0..<c {
                            for p in 0..<(h * w) {
                                // IDX colour images are [N,H,W,C]; ours are [B,C,H,W].
                                let v = c == 1 ? src[base + p] : src[base + p * c + ch]
                                x[i * per + ch * h * w + p] = Float(v) / 127.5 - 1
                            }
                        }
                    }
                }
                var record = Record()
                record["x"] = Tensor(x, shape: [b, c, h, w])
                if let labelBytes { record["y"] = Tensor(labelBytes[start..<(start + b)].map { Int64($0) }, shape: [b]) }
                record["id"] = Tensor((start..<(start + b)).map { Int64($0) }, shape: [b])
                record.metadata = ["tool": "tensors from-idx", "version": Toolkit.version, "source": images]
                try writer.write(record)
                start += b
            }
            try writer.finish()
        }
    }
}
