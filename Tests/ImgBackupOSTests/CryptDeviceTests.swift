import Testing

@testable import ImgBackupOS

/// The real libcryptsetup on a plain file: formatting and checking a key need
/// no device-mapper, so these run on any host.
@Suite struct CryptDeviceTests {
    let cheap = PBKDFSettings(kind: .pbkdf2, forcedIterations: 1000)

    func key(_ text: String) -> SecureBytes {
        var bytes = Array(text.utf8)
        return SecureBytes(consuming: &bytes)
    }

    @Test func formatsLUKS2AndOpensOnlyWithTheRightKey() throws {
        let scratch = ScratchDirectory()
        let image = scratch.file("image", size: 32 << 20)
        let uuid = try CryptDevice(devicePath: image).formatLUKS2(key: key("right key\n"), pbkdf: cheap)

        let reloaded = try CryptDevice(devicePath: image)
        try reloaded.load()
        #expect(reloaded.uuid == uuid)
        #expect(reloaded.type == "LUKS2")
        #expect(reloaded.cipherSpec == "aes-xts-plain64")
        #expect(try reloaded.activate(name: nil, key: key("right key\n")) == 0)

        let error = #expect(throws: CryptSetupError.self) { try reloaded.activate(name: nil, key: key("right key")) }
        #expect(error?.isWrongKey == true, "a key missing its trailing newline is a different key")
    }

    @Test func aSecondKeyOpensTheImageAndDestroyingASlotRevokesItsKey() throws {
        let scratch = ScratchDirectory()
        let image = scratch.file("image", size: 32 << 20)
        _ = try CryptDevice(devicePath: image).formatLUKS2(key: key("first"), pbkdf: cheap)

        let crypt = try CryptDevice(devicePath: image)
        try crypt.load()
        #expect(crypt.activeKeyslots == [0])
        #expect(try crypt.addKeyslot(existingKey: key("first"), newKey: key("recovery"), pbkdf: cheap) == 1)
        #expect(crypt.activeKeyslots == [0, 1])
        let wrong = #expect(throws: CryptSetupError.self) {
            try crypt.addKeyslot(existingKey: key("not a key"), newKey: key("third"), pbkdf: cheap)
        }
        #expect(wrong?.call == "crypt_keyslot_add_by_passphrase")

        let reloaded = try CryptDevice(devicePath: image)
        try reloaded.load()
        #expect(try reloaded.activate(name: nil, key: key("recovery")) == 1)
        try reloaded.destroyKeyslot(0)
        #expect(reloaded.activeKeyslots == [1])
        let revoked = #expect(throws: CryptSetupError.self) { try reloaded.activate(name: nil, key: key("first")) }
        #expect(revoked?.isWrongKey == true)
        #expect(try reloaded.activate(name: nil, key: key("recovery")) == 1)
    }

    @Test func aFileWithoutAHeaderIsNotLUKS() throws {
        let scratch = ScratchDirectory()
        let image = scratch.file("zeros", size: 32 << 20)
        let error = #expect(throws: CryptSetupError.self) { try CryptDevice(devicePath: image).load() }
        #expect(error?.isNotLUKS == true)
    }

    @Test func deactivatingAMappingThatDoesNotExistSucceeds() throws {
        try CryptDevice.deactivate(name: "imgbackup-test-never-existed")
        #expect(!CryptDevice.isActive(name: "imgbackup-test-never-existed"))
    }

    @Test func secureBytesNeverPrintTheKey() {
        let secret = key("hunter2")
        #expect(secret.description == "<7 key bytes>")
        #expect(!"\(secret)".contains("hunter2"))
    }
}
