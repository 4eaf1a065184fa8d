import Foundation
import Testing

@testable import ImgBackupCore

/// The exit statuses are defined once (ExitStatus); what promises them to
/// users and to systemd is checked against that table here.
@Suite struct ExitStatusTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    static func text(_ path: String) throws -> String {
        try String(contentsOfFile: "\(repository)/\(path)", encoding: .utf8)
    }

    @Test func theTableInTheUsageDocIsTheCodesTable() throws {
        let usage = try Self.text("docs/usage.md")
        let section = try #require(usage.components(separatedBy: "## Exit status\n").dropFirst().first)
        let rows = section.split(separator: "\n").drop { !$0.hasPrefix("| ---") }.dropFirst()
            .prefix { $0.hasPrefix("|") }
            .map { line in line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
        #expect(rows.map { $0.first ?? "" } == ExitStatus.all.map { String($0.value) })
        #expect(rows.map { $0.dropFirst().first ?? "" } == ExitStatus.all.map(\.meaning))
    }

    @Test(arguments: ["configs/imgbackup@.service", "configs/imgbackup-trim@.service"])
    func theUnitsRetryExactlyWhatMayPassLater(unit: String) throws {
        let line = try #require(
            try Self.text(unit).split(separator: "\n").first { $0.hasPrefix("RestartPreventExitStatus=") })
        let listed = line.dropFirst("RestartPreventExitStatus=".count).split(separator: " ").compactMap { Int32($0) }
        #expect(listed == ExitStatus.all.filter { !$0.retryLater && $0 != .success }.map(\.value))
    }

    @Test func everyErrorCodeExitsWithAStatusOfTheTable() {
        let codes: [ImgBackupError.Code] = [
            .usage, .config, .refused, .copyFailed, .hung, .locked, .alreadyOpen, .badKey, .luks, .remote, .system,
            .timeout, .invalidState, .interrupted, .damaged,
        ]
        #expect(Set(codes.map(\.exitStatus)) == Set(ExitStatus.all.dropFirst().map(\.value)))
        #expect(ExitStatus.helpText.hasPrefix("Exit status: 0 success; 1 usage or config error; 2 copy step failed;"))
    }
}
