import Foundation
import Testing

@testable import ImgBackupCore

/// Which key source wins: --key-file / --key-fd, then the systemd
/// credential imgbackup.TARGET, then the config.
@Suite struct KeySourceChoiceTests {
    static let target = Target(
        name: "offsite", remote: RemoteLocation(user: nil, host: "h", directory: "/r"), image: "i.img",
        key: .file("/etc/imgbackup/offsite.key"), mountPoint: "/mnt/offsite")

    func withCredential(_ body: (String) throws -> Void) throws {
        let directory = makeScratchDirectory("credentials")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        FileManager.default.createFile(atPath: "\(directory)/imgbackup.offsite", contents: Data("k".utf8))
        try body(directory)
    }

    func resolve(_ choice: KeySourceChoice, credentials: String?, terminal: Bool = false) throws -> Target.KeySource {
        try choice.resolve(Self.target, credentialsDirectory: credentials, standardInputIsTerminal: terminal).key
    }

    @Test func theCommandLineWinsOverACredentialAndTheConfig() throws {
        try withCredential { (credentials: String) throws in
            #expect(try resolve(KeySourceChoice(keyFile: "/root/k"), credentials: credentials) == .file("/root/k"))
            #expect(try resolve(KeySourceChoice(keyDescriptor: 5), credentials: credentials) == .descriptor(5))
            #expect(try resolve(KeySourceChoice(keyFile: "-"), credentials: credentials) == .descriptor(0))
        }
    }

    @Test func aCredentialForTheTargetWinsOverTheConfig() throws {
        try withCredential { (credentials: String) throws in
            #expect(
                try resolve(KeySourceChoice(), credentials: credentials)
                    == .credential("\(credentials)/imgbackup.offsite"))
        }
    }

    @Test func theConfigsKeyIsUsedWhenNothingElseIsGiven() throws {
        #expect(try resolve(KeySourceChoice(), credentials: nil) == .file("/etc/imgbackup/offsite.key"))
        #expect(try resolve(KeySourceChoice(), credentials: "") == .file("/etc/imgbackup/offsite.key"))
        // A credentials directory of another unit, without this target's key.
        let other = makeScratchDirectory("credentials")
        defer { try? FileManager.default.removeItem(atPath: other) }
        #expect(try resolve(KeySourceChoice(), credentials: other) == .file("/etc/imgbackup/offsite.key"))
    }

    @Test func aKeyFileIsMadeAbsoluteAndStandardInputIsNeverAPersonsTerminal() throws {
        let relative = try resolve(KeySourceChoice(keyFile: "keys/../offsite.key"), credentials: nil)
        #expect(relative == .file(FileManager.default.currentDirectoryPath + "/offsite.key"))
        let error = #expect(throws: ImgBackupError.self) {
            try resolve(KeySourceChoice(keyFile: "-"), credentials: nil, terminal: true)
        }
        #expect(error?.code == .usage)
        #expect(error?.message == "refusing to read the key from a terminal")
    }
}
