import Testing

@testable import ImgBackupCore

@Suite struct ParsingTests {
    @Test(arguments: [
        ("50G", UInt64(50) << 30), ("512M", 512 << 20), ("64MiB", 64 << 20), ("1T", 1 << 40),
        ("4k", 4096), ("1048576", 1_048_576), ("2GB", 2 << 30),
    ])
    func sizes(text: String, bytes: UInt64) {
        #expect(ByteSize(parsing: text)?.bytes == bytes)
    }

    @Test(arguments: ["50X", "", "G", "-1G", "1.5G", "99999999999999999999", "20000000P"])
    func badSizes(text: String) {
        #expect(ByteSize(parsing: text) == nil)
    }

    @Test func sizeFormatting() {
        #expect(ByteSize(bytes: 64 << 20).description == "64 MiB")
        #expect(ByteSize(bytes: 3 << 29).description == "1.5 GiB")
        #expect(ByteSize(bytes: 100).description == "100 B")
    }

    @Test(arguments: [
        ("120s", Duration.seconds(120)), ("2m", .seconds(120)), ("1h", .seconds(3600)),
        ("500ms", .milliseconds(500)), ("30", .seconds(30)),
    ])
    func durations(text: String, duration: Duration) {
        #expect(Duration(parsing: text) == duration)
    }

    @Test(arguments: ["", "soon", "1d", "-5s", "5 s s"])
    func badDurations(text: String) {
        #expect(Duration(parsing: text) == nil)
    }

    @Test func remoteLocations() throws {
        #expect(
            try RemoteLocation.parse("backup@host:/srv/b").get()
                == .init(user: "backup", host: "host", directory: "/srv/b"))
        #expect(try RemoteLocation.parse("host:/srv/b").get() == .init(user: nil, host: "host", directory: "/srv/b"))
        let v6 = try RemoteLocation.parse("u@[2001:db8::1]:/d").get()
        #expect(v6.host == "2001:db8::1")
        #expect(v6.sshfsSource == "u@[2001:db8::1]:/d")
        #expect(try RemoteLocation.parse("u@h:/dir with space").get().directory == "/dir with space")
    }

    @Test(arguments: ["host", "host:relative", "@h:/d", ":/d", "-oProxyCommand=x:/d", "u@[::1/d", "-u@h:/d"])
    func badRemoteLocations(text: String) {
        #expect(throws: RemoteLocation.ParseFailure.self) { try RemoteLocation.parse(text).get() }
    }

    @Test func sshfsArgumentsKeepEachOptionWhole() throws {
        var target = Target(
            name: "t", remote: try RemoteLocation.parse("u@h:/srv").get(), image: "t.img", key: .file("/k"),
            mountPoint: "/mnt/t")
        target.port = 2222
        target.identityFile = "/keys/id,with,commas"
        target.sshOptions = ["UserKnownHostsFile=/a b/known_hosts"]
        let arguments = SSHFSLayer.arguments(for: SSHFSEndpoint(target: target), mountPoint: "/run/imgbackup/t/remote")
        #expect(Array(arguments.prefix(2)) == ["u@h:/srv", "/run/imgbackup/t/remote"])
        #expect(arguments.contains("Port=2222"))
        #expect(arguments.contains("IdentityFile=/keys/id\\,with\\,commas"))
        #expect(arguments.contains("UserKnownHostsFile=/a b/known_hosts"))
        #expect(arguments.contains("BatchMode=yes"))
        // A failed write must fail that write, not a later flush (remote full).
        #expect(arguments.contains("sshfs_sync"))
        // Every option is preceded by its own -o.
        for (index, argument) in arguments.enumerated().dropFirst(2) where index % 2 == 0 {
            #expect(argument == "-o")
        }
    }

    @Test(arguments: [
        ("laptop", true), ("a-b_c9", true), ("", false), ("-x", false), ("a b", false),
        ("a/b", false), ("ümlaut", false),
    ])
    func targetNames(name: String, valid: Bool) {
        #expect(Target.isValidName(name) == valid)
    }
}

@Suite struct FstrimOutputTests {
    @Test func fstrimOutputParsing() {
        #expect(TrimOperation.trimmedBytes(fromFstrim: "/mnt/x: 59.9 MiB (62820352 bytes) trimmed\n") == 62_820_352)
        #expect(TrimOperation.trimmedBytes(fromFstrim: "garbage") == nil)
    }
}
