import Foundation
import Testing

@testable import ImgBackupCore

/// The config loader against thousands of mangled configs: it must never
/// crash, and every refusal must be one line that names the file, as a
/// person would need it. Seeded, so a failure reproduces.
@Suite struct ConfigFuzzTests {
    static let valid = """
        [target.offsite]
        remote        = "backup@backup-host:/srv/backups/laptop"
        port          = 22
        identity_file = "/root/.ssh/imgbackup_ed25519"
        ssh_options   = ["StrictHostKeyChecking=yes"]
        image         = "laptop.img"
        size          = "50G"
        filesystem    = "ext4"
        transport     = "sshfs"
        key_file      = "/etc/imgbackup/offsite.key"
        mount_point   = "/mnt/imgbackup/offsite"

        [target.offsite.nbd]
        command = ["nbdkit", "--single", "--exit-with-parent", "file", "/srv/backups/laptop/laptop.img"]

        [target.offsite.copy]
        method  = "rsync"
        sources = ["/etc", "/home"]
        exclude = ["/home/*/.cache"]

        [target.offsite.retention]
        keep_daily = 7
        keep_weekly = 4

        [target.offsite.timeouts]
        stall    = "120s"
        teardown = "30s"

        [target.offsite.hooks]
        pre = [["systemctl", "stop", "db"]]
        """

    static let fragments = [
        "\"", "'", "[", "]", "[[", "]]", "=", ",", "{", "}", "#", "\n", "\\", "\\u", ".", "-", "0x", "1e999", "-0",
        "9223372036854775808", "true", "nan", "inf", "\"\"\"", "'''", "\u{0}", "\u{7f}", "é", "💾", "$(rm -rf /)",
        " ", "\t", "\r\n", "target", "key_file", "size = \"50X\"", "[target.x]", "[target.offsite]", "= =",
        "port = 70000", "stall = \"-5s\"", "sources = [1, 2]", "remote = \"h:rel\"", "1979-05-27T07:32:00Z",
    ]

    static func mangle(_ text: String, using generator: inout SeededGenerator) -> String {
        var characters = Array(text)
        for _ in 0..<Int.random(in: 1...6, using: &generator) {
            let position = characters.isEmpty ? 0 : Int.random(in: 0..<characters.count, using: &generator)
            switch Int.random(in: 0..<5, using: &generator) {
            case 0 where !characters.isEmpty:  // delete a run
                let end = min(characters.count, position + Int.random(in: 1...12, using: &generator))
                characters.removeSubrange(position..<end)
            case 1:  // insert a fragment
                characters.insert(contentsOf: fragments.randomElement(using: &generator)!, at: position)
            case 2 where !characters.isEmpty:  // duplicate a run
                let end = min(characters.count, position + Int.random(in: 1...80, using: &generator))
                characters.insert(contentsOf: characters[position..<end], at: position)
            case 3:  // a random byte-ish character
                characters.insert(Character(Unicode.Scalar(UInt8.random(in: 1...127, using: &generator))), at: position)
            default:  // swap two lines
                var lines = String(characters).split(separator: "\n", omittingEmptySubsequences: false)
                if lines.count > 1 {
                    let a = Int.random(in: 0..<lines.count, using: &generator)
                    let b = Int.random(in: 0..<lines.count, using: &generator)
                    lines.swapAt(a, b)
                }
                characters = Array(lines.joined(separator: "\n"))
            }
        }
        return String(characters)
    }

    @Test func theValidConfigLoads() throws {
        _ = try ConfigLoader.parse(Self.valid, path: "fuzz.toml").target(named: "offsite")
    }

    /// `make test` runs 8 seeds; `IMGBACKUP_FUZZ_SEEDS=1000 swift test
    /// --filter ConfigFuzz` explores longer, with
    /// `IMGBACKUP_FUZZ_KEEP=DIR` keeping each seed's last input in DIR.
    static let seeds = UInt64(ProcessInfo.processInfo.environment["IMGBACKUP_FUZZ_SEEDS"] ?? "") ?? 8
    static let keepInputsIn = ProcessInfo.processInfo.environment["IMGBACKUP_FUZZ_KEEP"]

    @Test(arguments: 0..<seeds)
    func mangledConfigsLoadOrFailInOneLineNamingTheFile(seed: UInt64) {
        var generator = SeededGenerator(state: seed)
        var refused = 0
        for round in 0..<500 {
            let text = Self.mangle(Self.valid, using: &generator)
            if let keep = Self.keepInputsIn {
                // A crash kills the test process: the input that did it is left here.
                try? text.write(toFile: "\(keep)/fuzz-\(seed).toml", atomically: false, encoding: .utf8)
            }
            do {
                _ = try ConfigLoader.parse(text, path: "fuzz.toml")
            } catch {
                refused += 1
                let line = error.description
                #expect(!line.contains("\n"), "seed \(seed) round \(round): \(line)")
                #expect(line.hasPrefix("fuzz.toml"), "seed \(seed) round \(round): \(line)")
                #expect(error.code == .config, "seed \(seed) round \(round): \(line)")
            }
        }
        #expect(refused > 100, "the mangling must break most configs, or this tests nothing")
    }
}
