#if canImport(Glibc)
import Glibc
#endif
import CPNG
import TensorStream

/// Conversions between the toolkit's image tensors (F32 [B,C,H,W] in [-1,1]) and 8-bit pixels.
public enum ImageConversion {
    /// [-1,1] -> 0...255: v = floor((x + 1) * 127.5 + 0.5) clamped, the rounding torchvision's
    /// save_image applies on [0,1]. NaN maps to 0.
    @inline(__always)
    public static func byte(_ x: Float) -> UInt8 {
        let v = (x + 1) * 127.5 + 0.5
        if !(v > 0) { return 0 }
        if v >= 255 { return 255 }
        return UInt8(v)
    }

    /// 0...maxValue -> [-1,1].
    @inline(__always)
    public static func unit(_ v: Int, maxValue: Int) -> Float { Float(Double(v) / Double(maxValue) * 2 - 1) }

    /// Lays out `count` images of x ([B,C,H,W]) in rows x cols with `padding` black pixels,
    /// returning interleaved 8-bit pixels (C = 1 or 3) and the grid's size.
    public static func grid(_ x: UnsafeBufferPointer<Float>, shape: [Int], count: Int, rows: Int, cols: Int, padding: Int = 2)
        -> (pixels: [UInt8], width: Int, height: Int)
    {
        let (c, h, w) = (shape[1], shape[2], shape[3])
        let width = cols * w + (cols + 1) * padding
        let height = rows * h + (rows + 1) * padding
        var pixels = [UInt8](repeating: 0, count: width * height * c)
        for i in 0..<min(count, rows * cols) {
            let (r, q) = (i / cols, i % cols)
            let x0 = padding + q * (w + padding), y0 = padding + r * (h + padding)
            let base = i * c * h * w
            for yy in 0..<h {
                for xx in 0..<w {
                    for ch in 0..<c {
                        pixels[((y0 + yy) * width + x0 + xx) * c + ch] = byte(x[base + (ch * h + yy) * w + xx])
                    }
                }
            }
        }
        return (pixels, width, height)
    }
}

/// PNG files through the C shim (libpng's longjmp never crosses a Swift frame).
public enum PNGFile {
    public struct Image {
        public var width: Int
        public var height: Int
        public var channels: Int
        public var bitDepth: Int
        /// Samples as integers (0...255 or 0...65535), [H, W, C] interleaved.
        public var samples: [UInt16]
    }

    public static func read(_ path: String) throws -> Image {
        var image = cpng_image()
        var message = [CChar](repeating: 0, count: 512)
        guard cpng_read(path, &image, &message, message.count) == 0 else {
            throw StreamError.invalid("\(path): \(String(cString: message))")
        }
        defer { cpng_free(&image) }
        let n = Int(image.width) * Int(image.height) * Int(image.channels)
        var samples = [UInt16](repeating: 0, count: n)
        if image.bit_depth == 16 {
            image.pixels.withMemoryRebound(to: UInt16.self, capacity: n) { p in for i in 0..<n { samples[i] = p[i] } }
        } else {
            for i in 0..<n { samples[i] = UInt16(image.pixels[i]) }
        }
        return Image(width: Int(image.width), height: Int(image.height), channels: Int(image.channels),
                     bitDepth: Int(image.bit_depth), samples: samples)
    }

    /// Writes 8-bit grey (channels 1) or RGB (channels 3) pixels, interleaved, atomically.
    public static func write(_ pixels: [UInt8], width: Int, height: Int, channels: Int, to path: String) throws {
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = (dir.isEmpty ? "" : dir + "/") + ".\(base).tmp-\(getpid())"
        var message = [CChar](repeating: 0, count: 512)
        guard cpng_write(temporary, Int32(width), Int32(height), Int32(channels), pixels, &message, message.count) == 0 else {
            unlink(temporary)
            throw StreamError.io(String(cString: message))
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            throw StreamError.io("cannot move the finished PNG to \(path)")
        }
    }
}
