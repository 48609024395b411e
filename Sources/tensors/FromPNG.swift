import ArgumentParser
import Foundation
import Shared

extension Tensors {
    struct FromPNG: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "from-png",
            abstract: "Convert PNG files (8/16-bit grey or RGB) to a stream of `x` in [-1,1] and `id`.",
            discussion: """
            Folders are searched recursively; files are taken in sorted path order. With --labels, each
            image's label is its parent folder's name (the ImageFolder convention): class folders sorted
            by name get ids 0, 1, ...; the map is written to metadata key `labels` as JSON.
            Palette images become RGB, alpha is dropped. All images must share size and channels.
              tensors from-png --labels my-images/ > data.tzst
            """)

        @Argument(help: "PNG files or folders.")
        var paths: [String]

        @Flag(help: "Take labels `y` from the sub-folder names.")
        var labels = false

        @Option(help: "Samples per record.")
        var batch: Int = 256

        @OptionGroup var output: OutputOptions
        @OptionGroup var progress: ProgressOptions

        func validate() throws {
            guard batch > 0 else { throw ValidationError("--batch must be positive") }
            guard !paths.isEmpty else { throw ValidationError("give at least one PNG file or folder") }
        }

        func collect() throws -> [(path: String, labelName: String?)] {
            var found: [(String, String?)] = []
            let fm = FileManager.default
            for root in paths {
                var isDir: ObjCBool = false
                guard fm.fileExists(atPath: root, isDirectory: &isDir) else { throw ToolError("\(root) does not exist") }
                if isDir.boolValue {
                    guard let walker = fm.enumerator(atPath: root) else { throw ToolError("cannot list \(root)") }
                    var files: [String] = []
                    while let rel = walker.nextObject() as? String { if rel.lowercased().hasSuffix(".png") { files.append(rel) } }
                    for rel in files.sorted() {
                        let comps = rel.split(separator: "/")
                        found.append((root + "/" + rel, comps.count >= 2 ? String(comps[comps.count - 2]) : nil))
                    }
                } else {
                    let comps = root.split(separator: "/")
                    found.append((root, comps.count >= 2 ? String(comps[comps.count - 2]) : nil))
                }
            }
            return found
        }

        func run() throws {
            let files = try collect()
            guard !files.isEmpty else { throw ToolError("no PNG files found") }
            var labelIds: [String: Int] = [:]
            if labels {
                var names = Set<String>()
                for f in files {
                    guard let name = f.labelName else { throw ToolError("\(f.path) is not inside a class folder, so it has no label") }
                    names.insert(name)
                }
                for (i, name) in names.sorted().enumerated() { labelIds[name] = i }
            }
            let labelMap = "{" + labelIds.keys.sorted().map { "\(JSON.quote($0)):\(labelIds[$0]!)" }.joined(separator: ",") + "}"
            let writer = try output.writer()
            let bar = Progress(label: "images", total: files.count, enabled: progress.showProgress)
            var shape: (c: Int, h: Int, w: Int)?
            var start = 0
            while start < files.count {
                let chunk = files[start..<min(start + batch, files.count)]
                var x: [Float] = []
                var y: [Int64] = []
                for f in chunk {
                    let image = try PNGFile.read(f.path)
                    if let s = shape {
                        guard s == (image.channels, image.height, image.width) else {
                            throw ToolError("\(f.path) is \(image.width)x\(image.height)x\(image.channels) but earlier images are \(s.w)x\(s.h)x\(s.c)")
                        }
                    } else {
                        shape = (image.channels, image.height, image.width)
                    }
                    let maxValue = image.bitDepth == 16 ? 65535 : 255
                    let (c, h, w) = (image.channels, image.height, image.width)
                    var planar = [Float](repeating: 0, count: c * h * w)
                    for p in 0..<(h * w) { for ch in 0..<c { planar[ch * h * w + p] = ImageConversion.unit(Int(image.samples[p * c + ch]), maxValue: maxValue) } }
                    x.append(contentsOf: planar)
                    if labels { y.append(Int64(labelIds[f.labelName!]!)) }
                    bar.advance()
                }
                let b = chunk.count
                var record = Record()
                record["x"] = Tensor(x, shape: [b, shape!.c, shape!.h, shape!.w])
                if labels { record["y"] = Tensor(y, shape: [b]) }
                record["id"] = Tensor((start..<(start + b)).map { Int64($0) }, shape: [b])
                record.metadata = ["tool": "tensors from-png", "version": Toolkit.version]
                if labels { record.metadata["labels"] = labelMap }
                try writer.write(record)
                start += b
            }
            try writer.finish()
            bar.finish()
        }
    }
}
