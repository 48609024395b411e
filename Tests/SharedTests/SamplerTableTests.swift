import XCTest
import Shared

/// Regenerates the error table of docs/samplers.md. Runs only when SAMPLER_TABLE_OUT names a
/// file to write (it takes ~30 s); the assertions on the same numbers live in SamplerMomentTests.
final class SamplerTableTests: XCTestCase {
    func testWriteErrorTable() throws {
        guard let path = ProcessInfo.processInfo.environment["SAMPLER_TABLE_OUT"] else {
            throw XCTSkip("set SAMPLER_TABLE_OUT=path to regenerate the docs/samplers.md table")
        }
        let start = Date()
        let table = "### Summary (exact moment propagation, default eta)\n\n" + SamplerDiagnostics.summaryTable()
            + "\n### Exact moment propagation\n" + SamplerDiagnostics.errorTable(monteCarlo: false)
            + "\n### Monte Carlo through Sampler.sample\n" + SamplerDiagnostics.errorTable(monteCarlo: true, samples: 50_000)
        try table.write(toFile: path, atomically: true, encoding: .utf8)
        print("error table written to \(path) in \(Date().timeIntervalSince(start)) s")
    }
}
