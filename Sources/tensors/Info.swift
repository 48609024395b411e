import ArgumentParser
import Foundation
import Shared

extension Tensors {
    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List every record's tensors and metadata, then a summary; or a checkpoint's tensors, config and provenance.",
            discussion: """
            Reads one record at a time, so a stream of any size is inspected in bounded memory. A plain \
            safetensors file (a checkpoint of train, rlstep, embed train, discrim train, fid stats) is \
            shown as one record: its tensors, parameter count and metadata (config, step, parent, tool, \
            version). --meta KEY prints one metadata value (of the checkpoint, or of a stream's first \
            record), or nothing when it is absent.
              sample --model m.safetensors --n 64 | tensors info
              tensors info --summary train.tzst
              tensors info model.safetensors
              tensors info --meta parent_sha256 model.safetensors
            """)

        @OptionGroup var input: InputOptions

        @Flag(help: "Print one JSON object per record, then a summary object (JSON lines).")
        var json = false

        @Flag(name: [.short, .long], help: "Print only the summary.")
        var summary = false

        @Option(name: .customLong("meta"), help: "Print only the value of this metadata key (empty when absent).")
        var meta: String?

        func run() throws {
            if let path = input.path, Checkpoint.isCheckpoint(path) { return try checkpoint(path) }
            if let meta {
                let value = try input.reader().read()?.metadata[meta]
                return try printLine(value ?? "")
            }
            let reader = try input.reader()
            var records = 0, samples = 0, payload = 0
            var names: [String: (dtype: String, shape: [Int])] = [:]
            while let record = try reader.read() {
                let b = record.batchSize ?? 0
                if !summary {
                    if json {
                        var tensors: [String] = []
                        for (name, t) in record.tensors {
                            tensors.append("\(JSON.quote(name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))]}")
                        }
                        let meta = record.metadata.keys.sorted().map { "\(JSON.quote($0)):\(JSON.quote(record.metadata[$0]!))" }
                        try printLine("{\"record\":\(records),\"samples\":\(b),\"payload_bytes\":\(record.payloadBytes),\"tensors\":{\(tensors.joined(separator: ","))},\"metadata\":{\(meta.joined(separator: ","))}}")
                    } else {
                        try printLine("record \(records): \(b) samples, \(record.payloadBytes) bytes")
                        for (name, t) in record.tensors {
                            let shape = "[" + t.shape.map(String.init).joined(separator: ",") + "]"
                            try printLine("  \(name.padding(toLength: max(12, name.count), withPad: " ", startingAt: 0)) \(t.dtype.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0)) \(shape)")
                        }
                        for key in record.metadata.keys.sorted() {
                            try printLine("  @\(key) = \(record.metadata[key]!)")
                        }
                    }
                }
                for (name, t) in record.tensors where names[name] == nil { names[name] = (t.dtype.rawValue, t.shape) }
                records += 1
                samples += b
                payload += record.payloadBytes
            }
            if json {
                try printLine("{\"summary\":{\"records\":\(records),\"samples\":\(samples),\"payload_bytes\":\(payload),\"compressed_bytes\":\(reader.compressedBytes)}}")
            } else {
                let ratio = payload > 0 ? String(format: "%.2f", Double(reader.compressedBytes) / Double(payload)) : "-"
                try printLine("records: \(records)  samples: \(samples)  payload: \(payload) bytes  compressed: \(reader.compressedBytes) bytes (ratio \(ratio))")
                if summary && !names.isEmpty {
                    try printLine("tensors: " + names.keys.sorted().map { "\($0) \(names[$0]!.dtype)" }.joined(separator: ", "))
                }
            }
        }

        func checkpoint(_ path: String) throws {
            let record = try Checkpoint.read(path, limits: RecordCodec.Limits(maxRecordBytes: input.limits.maxRecordMiB << 20))
            if let meta { return try printLine(record.metadata[meta] ?? "") }
            let parameters = record.tensors.reduce(0) { $0 + $1.1.shape.reduce(1, *) }
            let bytes = (try? readFile(path).count) ?? record.payloadBytes
            if json {
                var tensors: [String] = []
                for (name, t) in record.tensors {
                    tensors.append("\(JSON.quote(name)):{\"dtype\":\"\(t.dtype.rawValue)\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))]}")
                }
                let meta = record.metadata.keys.sorted().map { "\(JSON.quote($0)):\(JSON.quote(record.metadata[$0]!))" }
                return try printLine("{\"checkpoint\":\(JSON.quote(path)),\"tensors\":{\(tensors.joined(separator: ","))},\"parameters\":\(parameters),\"bytes\":\(bytes),\"metadata\":{\(meta.joined(separator: ","))}}")
            }
            try printLine("checkpoint \(path): \(record.tensors.count) tensors, \(parameters) values, \(bytes) bytes")
            if !summary {
                for (name, t) in record.tensors {
                    let shape = "[" + t.shape.map(String.init).joined(separator: ",") + "]"
                    try printLine("  \(name.padding(toLength: max(12, name.count), withPad: " ", startingAt: 0)) \(t.dtype.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0)) \(shape)")
                }
            }
            for key in record.metadata.keys.sorted() { try printLine("  @\(key) = \(record.metadata[key]!)") }
        }
    }
}
