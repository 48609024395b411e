import ArgumentParser
import Foundation
import Shared

extension Tensors {
    struct ToPNG: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "to-png",
            abstract: "Write images `x` ([B,C,H,W] in [-1,1], C = 1 or 3) as a PNG grid or one PNG per image.",
            discussion: """
            Pixels are floor((x + 1) * 127.5 + 0.5) clamped to 0...255 (NaN becomes 0).
              tensors to-png --grid 8x8 -o grid.png < samples.tzst
              tensors to-png --dir pngs/ < samples.tzst      # pngs/000000.png ... named by `id`
            """)

        @Option(help: "Grid as COLSxROWS, e.g. 8x8: the first COLS*ROWS images.")
        var grid: String?

        @Option(name: [.short, .customLong("output")], help: "The grid PNG to write.")
        var output: String?

        @Option(help: "Write one PNG per image into this folder instead of a grid.")
        var dir: String?

        @Option(help: "Stop after this many images (with --dir).")
        var limit: Int?

        @Option(help: "Black border between grid cells, in pixels.")
        var padding: Int = 2

        @OptionGroup var input: InputOptions

        func validate() throws {
            if (dir == nil) == (output == nil) { throw ValidationError("give either -o FILE.png (a grid) or --dir DIR") }
            if dir != nil && grid != nil { throw ValidationError("--grid goes with -o, not --dir") }
            if let grid, parseGrid(grid) == nil { throw ValidationError("--grid must look like 8x8") }
            if padding < 0 { throw ValidationError("--padding must be non-negative") }
        }

        func parseGrid(_ s: String) -> (cols: Int, rows: Int)? {
            let parts = s.split(separator: "x").compactMap { Int($0) }
            guard parts.count == 2, parts[0] > 0, parts[1] > 0, parts[0] * parts[1] <= 1 << 16 else { return nil }
            return (parts[0], parts[1])
        }

        func checkImages(_ x: Tensor) throws {
            guard x.dtype == .f32 || x.dtype == .f16 || x.dtype == .bf16 || x.dtype == .f64 else {
                throw ToolError("`x` is \(x.dtype.rawValue), not a floating-point image tensor")
            }
            guard x.shape.count == 4, x.shape[1] == 1 || x.shape[1] == 3 else {
                throw ToolError("`x` has shape \(x.shape); to-png needs [B,C,H,W] with C = 1 or 3")
            }
        }

        func run() throws {
            let reader = try input.reader()
            if let dir {
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                var written = 0
                while let record = try reader.read() {
                    let x = try record.require("x", by: "to-png")
                    try checkImages(x)
                    let ids = try record["id"]?.int64s()
                    let values = try x.floats()
                    let per = x.shape[1] * x.shape[2] * x.shape[3]
                    for i in 0..<x.shape[0] {
                        if let limit, written >= limit { return }
                        let (pixels, w, h) = values.withUnsafeBufferPointer { p in
                            ImageConversion.grid(UnsafeBufferPointer(rebasing: p[(i * per)..<((i + 1) * per)]),
                                                 shape: [1] + Array(x.shape.dropFirst()), count: 1, rows: 1, cols: 1, padding: 0)
                        }
                        let name = String(format: "%06lld.png", ids.map { $0[i] } ?? Int64(written))
                        try PNGFile.write(pixels, width: w, height: h, channels: x.shape[1], to: dir + "/" + name)
                        written += 1
                    }
                }
                return
            }
            let (cols, rows) = grid.flatMap(parseGrid) ?? (8, 8)
            let wanted = cols * rows
            var parts: [Tensor] = []
            var have = 0
            while have < wanted, let record = try reader.read() {
                let x = try record.require("x", by: "to-png")
                try checkImages(x)
                let take = min(x.shape[0], wanted - have)
                parts.append(Tensor(try x.floats(), shape: x.shape).rows(0, take))
                have += take
            }
            guard have > 0 else { throw ToolError("the stream holds no images") }
            let all = try Tensor.concatenate(parts)
            let (pixels, w, h) = try all.withFloats {
                ImageConversion.grid($0, shape: all.shape, count: have, rows: rows, cols: cols, padding: padding)
            }
            try PNGFile.write(pixels, width: w, height: h, channels: all.shape[1], to: output!)
        }
    }
}
