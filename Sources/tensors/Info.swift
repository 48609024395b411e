import ArgumentParser
import Shared

extension Tensors {
    struct Info: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every record's tensors and metadata, then a summary.")

        @Argument(help: "Stream to read (default: standard input).")
        var file: String?

        @OptionGroup var input: InputOptions

        func run() throws {
            let reader = try input.reader(file ?? input.input)
            var records = 0
            while let record = try reader.read() {
                records += 1
                print("record \(records - 1): \(record.names.count) tensors")
            }
            print("records: \(records)")
        }
    }
}
