import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupCore

#if canImport(Glibc)
    import Glibc
#endif

/// A real S3 server for the host tests: `rclone serve s3` over a scratch
/// directory (scripts/install-deps.sh installs it), on a loopback port it
/// picks itself. Buckets are directories, objects files.
final class S3TestServer {
    static let rclone = "/opt/imgbackup-rclone/bin/rclone"
    static let accessKey = "AKIDIMGBACKUPTEST"
    static let secretKey = "imgbackup-test-secret/+="

    let directory: String
    let process: Process
    let endpoint: String

    init(bucket: String = "backups") throws {
        guard FileManager.default.isExecutableFile(atPath: Self.rclone) else {
            throw ImgBackupError(.system, "\(Self.rclone) is missing: run scripts/install-deps.sh")
        }
        directory = makeScratchDirectory("s3")
        try FileManager.default.createDirectory(
            atPath: "\(directory)/data/\(bucket)", withIntermediateDirectories: true)
        let log = "\(directory)/rclone.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        process = Process()
        process.executableURL = URL(fileURLWithPath: Self.rclone)
        process.arguments = [
            "serve", "s3", "--auth-key", "\(Self.accessKey),\(Self.secretKey)", "--addr", "127.0.0.1:0",
            "--config", "/dev/null", "\(directory)/data",
        ]
        process.standardError = FileHandle(forWritingAtPath: log)
        process.standardOutput = FileHandle(forWritingAtPath: log)
        try process.run()
        var found: String?
        for _ in 0..<100 {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            if let range = text.range(of: #"http://127\.0\.0\.1:[0-9]+"#, options: .regularExpression) {
                found = String(text[range])
                break
            }
            usleep(100_000)
        }
        guard let found else {
            process.terminate()
            throw ImgBackupError(.system, "rclone serve s3 did not start: \(log)")
        }
        endpoint = found
    }

    deinit {
        process.terminate()
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func location(bucket: String = "backups", prefix: String = "laptop") -> S3Location {
        S3Location(endpoint: endpoint, bucket: bucket, prefix: prefix, credentials: .file("/nonexistent"))
    }

    func client(_ location: S3Location, secret: String = S3TestServer.secretKey) -> S3Client {
        S3Client(
            location: location,
            credentials: S3Credentials(accessKeyID: Self.accessKey, secretAccessKey: secret, sessionToken: nil),
            runner: SubprocessCommandRunner(), deadline: .seconds(20))
    }

    /// The object files under `prefix/` as the server stores them.
    func objectFiles(bucket: String = "backups", prefix: String) -> [String] {
        let root = "\(directory)/data/\(bucket)/\(prefix)"
        return ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted()
    }
}

@Suite struct S3ConfigTests {
    static let config = """
        [target.cloud]
        transport = "s3"
        key_file = "/etc/imgbackup/cloud.key"

        [target.cloud.s3]
        endpoint = "https://s3.eu-central-1.amazonaws.com"
        bucket = "example-backups"
        prefix = "hosts/laptop"
        region = "eu-central-1"
        object_size = "4M"
        credentials_file = "/etc/imgbackup/cloud.s3-credentials"
        """

    @Test func readsAnS3Target() throws {
        let target = try ConfigLoader.parse(Self.config, path: "/c.toml").target(named: "cloud")
        #expect(target.transport == .s3)
        let s3 = try #require(target.s3)
        #expect(s3.bucket == "example-backups" && s3.prefix == "hosts/laptop" && s3.region == "eu-central-1")
        #expect(s3.objectSize == ByteSize(bytes: 4 << 20))
        #expect(s3.credentials == .file("/etc/imgbackup/cloud.s3-credentials"))
        #expect(s3.addressing == .path && s3.profile == "default")
        #expect(target.remote.host == "s3.eu-central-1.amazonaws.com" && target.image == "hosts/laptop")
        #expect(s3.metadataKey == "hosts/laptop.imgbackup" && s3.lockKey == "hosts/laptop.lock")
    }

    @Test(arguments: [
        ("bucket = \"example-backups\"", "bucket = \"Bad_Bucket\"", "is not a bucket name"),
        ("prefix = \"hosts/laptop\"", "prefix = \"hosts//laptop\"", "separated by single '/'"),
        ("prefix = \"hosts/laptop\"", "prefix = \"../laptop\"", "separated by single '/'"),
        ("object_size = \"4M\"", "object_size = \"3M\"", "power of two"),
        ("object_size = \"4M\"", "object_size = \"128M\"", "power of two"),
        ("endpoint = \"https://s3.eu-central-1.amazonaws.com\"", "endpoint = \"s3.amazonaws.com\"", "not an http"),
        ("endpoint = \"https://s3.eu-central-1.amazonaws.com\"", "endpoint = \"https://h/x\"", "no path"),
        (
            "credentials_file = \"/etc/imgbackup/cloud.s3-credentials\"",
            "credentials_file = \"/a\"\ncredentials_command = [\"pass\"]", "not both"
        ),
        ("credentials_file = \"/etc/imgbackup/cloud.s3-credentials\"", "", "needs credentials_file"),
        ("transport = \"s3\"", "transport = \"s3\"\nremote = \"b@h:/srv\"", "is for sshfs and nbd"),
        ("region = \"eu-central-1\"", "regoin = \"eu-central-1\"", "unknown key"),
    ])
    func refusesWhatCannotWork(replacing: String, with: String, message: String) {
        let text = Self.config.replacingOccurrences(of: replacing, with: with)
        #expect {
            try ConfigLoader.parse(text, path: "/c.toml")
        } throws: { error in
            (error as? ImgBackupError)?.message.contains(message) ?? false
        }
    }

    @Test func anS3TableNeedsTheS3Transport() {
        let text = Self.config.replacingOccurrences(of: "transport = \"s3\"", with: "remote = \"b@h:/srv\"")
        #expect {
            try ConfigLoader.parse(text, path: "/c.toml")
        } throws: { error in
            (error as? ImgBackupError)?.message.contains("only for transport = \"s3\"") ?? false
        }
    }
}

@Suite struct S3CredentialsTests {
    @Test func readsTheProfileAndNeverShowsAValue() throws {
        let text = """
            [default]
            aws_access_key_id = AKIDDEFAULT
            aws_secret_access_key = default-secret

            [backup]
            aws_access_key_id=AKIDBACKUP
            aws_secret_access_key=backup-secret
            aws_session_token = token
            """
        let credentials = try S3Credentials.parse(text, profile: "backup", origin: "/f")
        #expect(credentials.accessKeyID == "AKIDBACKUP" && credentials.secretAccessKey == "backup-secret")
        #expect(credentials.sessionToken == "token")
        #expect {
            try S3Credentials.parse("[backup]\naws_access_key_id = A\n", profile: "backup", origin: "/f")
        } throws: { error in
            let message = (error as? ImgBackupError)?.description ?? ""
            return message.contains("no aws_secret_access_key") && !message.contains("AKID")
        }
        #expect {
            try S3Credentials.parse(text, profile: "nope", origin: "/f")
        } throws: { error in
            let message = (error as? ImgBackupError)?.description ?? ""
            return message.contains("no [nope] section") && message.contains("default, backup")
                && !message.contains("secret")
        }
    }

    @Test func aLooseCredentialsFileIsRefused() async throws {
        let directory = makeScratchDirectory("s3-credentials")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/credentials"
        FileManager.default.createFile(
            atPath: path, contents: Data("[default]\naws_access_key_id = A\naws_secret_access_key = B\n".utf8),
            attributes: [.posixPermissions: 0o644])
        var location = S3Location(endpoint: "http://h", bucket: "bbb", prefix: "p", credentials: .file(path))
        await #expect {
            try await S3Credentials.load(location, runner: SubprocessCommandRunner())
        } throws: { error in
            (error as? ImgBackupError)?.message.contains("credentials file") ?? false
        }
        chmod(path, 0o600)
        #expect(try await S3Credentials.load(location, runner: SubprocessCommandRunner()).accessKeyID == "A")
        location.credentials = .command(["printf", "[default]\\naws_access_key_id = C\\naws_secret_access_key = D\\n"])
        #expect(try await S3Credentials.load(location, runner: SubprocessCommandRunner()).accessKeyID == "C")
    }
}

/// imgbackup's own S3 requests against a real S3 server.
@Suite(.serialized) struct S3ClientTests {
    @Test func writesReadsListsAndDeletesObjects() async throws {
        let server = try S3TestServer()
        let client = server.client(server.location())
        #expect(try await client.get("laptop.imgbackup") == nil)
        try await client.put("laptop.imgbackup", "line one\n\"quoted\" \\ back\n")
        #expect(try await client.get("laptop.imgbackup") == "line one\n\"quoted\" \\ back\n")
        for index in 0..<5 { try await client.put(String(format: "laptop/%016x", index), "block \(index)") }
        let listed = try await client.list(prefix: "laptop/", pageSize: 2)
        #expect(listed.map(\.key) == (0..<5).map { String(format: "laptop/%016x", $0) })
        #expect(listed.allSatisfy { $0.size == 7 })
        #expect(try await client.usage() == (5, 35))
        #expect(try await client.list(prefix: "laptop/", pageSize: 1, onePage: true).count == 1)
        #expect(try await client.deleteObjects() == 5)
        #expect(server.objectFiles(prefix: "laptop").isEmpty)
        try await client.delete("laptop.imgbackup")
        try await client.delete("laptop.imgbackup")  // gone already: fine
        #expect(try await client.get("laptop.imgbackup") == nil)
    }

    @Test func metadataRoundTripsAndAForgedOneIsRefused() async throws {
        let server = try S3TestServer()
        let client = server.client(server.location())
        try await client.writeMetadata(S3ImageMetadata(size: 64 << 20, objectSize: 1 << 20))
        #expect(try await client.requireMetadata() == S3ImageMetadata(size: 64 << 20, objectSize: 1 << 20))
        for forged in ["size=1\n", "imgbackup-s3-image 1\nsize=67108864\nobject_size=1000\n", ""] {
            try await client.put("laptop.imgbackup", forged)
            await #expect {
                try await client.readMetadata()
            } throws: { error in
                (error as? ImgBackupError)?.message.contains("is not imgbackup's") ?? false
            }
        }
        try await client.delete("laptop.imgbackup")
        await #expect {
            try await client.requireMetadata()
        } throws: { error in
            (error as? ImgBackupError)?.message.contains("there is no image at s3://backups/laptop") ?? false
        }
    }

    @Test func theStoresRefusalsAreOneClearLine() async throws {
        let server = try S3TestServer()
        let wrongKey = server.client(server.location(), secret: "not-the-secret")
        await #expect {
            try await wrongKey.get("laptop.lock")
        } throws: { error in
            let error = error as? ImgBackupError
            return error?.code == .remote && error!.message.contains("refused to read backups/laptop.lock: 403")
                && !error!.description.contains("not-the-secret")
        }
        let noBucket = server.client(server.location(bucket: "nobucket"))
        await #expect {
            try await noBucket.checkBucket()
        } throws: { error in
            (error as? ImgBackupError)?.message.contains("bucket 'nobucket' does not exist") ?? false
        }
        await #expect {
            try await noBucket.get("x")
        } throws: { error in
            (error as? ImgBackupError)?.message.contains("bucket 'nobucket' does not exist") ?? false
        }
        var closed = server.location()
        closed.endpoint = "http://127.0.0.1:9"
        await #expect {
            try await server.client(closed).get("x")
        } throws: { error in
            let message = (error as? ImgBackupError)?.message ?? ""
            return message.hasPrefix("failed to reach the S3 endpoint http://127.0.0.1:9: ") && !message.contains("\n")
        }
    }

    /// The lock over S3: taken, refused to another machine, replaced when
    /// it is this machine's own stale one, released only by its holder.
    @Test func theLockObjectKeepsASecondClientOut() async throws {
        let server = try S3TestServer()
        let client = server.client(server.location())
        let directory = makeScratchDirectory("s3-lock")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = RuntimePaths(runtimeDirectory: "\(directory)/run", stateDirectory: "\(directory)/state")
        let target = Target(
            name: "laptop", remote: RemoteLocation(user: nil, host: "h", directory: "/backups"), image: "laptop",
            key: .unset, mountPoint: "/mnt/x")
        let store = S3LockObject(client: client)
        let first = RemoteLock(store: store, target: target, paths: paths, breakLock: false, logger: .init(label: "t"))
        try await first.take()
        #expect(try await client.get("laptop.lock")?.contains("token=\(first.token)") == true)

        // Another machine's lock: refused, exit 4, and left alone.
        try await client.put("laptop.lock", "host=elsewhere\npid=7\ntarget=laptop\nsince=then\ntoken=theirs\n")
        let second = RemoteLock(store: store, target: target, paths: paths, breakLock: false, logger: .init(label: "t"))
        await #expect {
            try await second.take()
        } throws: { error in
            let error = error as? ImgBackupError
            return error?.code == .locked && error!.message.contains("locked by target 'laptop' on elsewhere")
        }
        await RemoteLock.release(store, token: second.token, logger: .init(label: "t"))
        #expect(try await client.get("laptop.lock")?.contains("token=theirs") == true)

        // This machine's own lock from a session that is over: replaced.
        try await client.delete("laptop.lock")
        try await first.take()
        let third = RemoteLock(store: store, target: target, paths: paths, breakLock: false, logger: .init(label: "t"))
        try await third.take()
        #expect(try await client.get("laptop.lock")?.contains("token=\(third.token)") == true)
        await RemoteLock.release(store, token: third.token, logger: .init(label: "t"))
        #expect(try await client.get("laptop.lock") == nil)
    }

    /// A store that answers 500 with a message of its own choosing, as long
    /// and as full of terminal escapes as it likes: one short line.
    @Test func aStoresLongErrorMessageIsClipped() throws {
        let client = S3Client(
            location: S3Location(
                endpoint: "http://127.0.0.1:9", bucket: "backups", prefix: "laptop", credentials: .file("/nonexistent")),
            credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "b", sessionToken: nil),
            runner: SubprocessCommandRunner(), deadline: .seconds(1))
        let message = String(repeating: "\u{1b}]0;owned\u{07}\nimgbackup: all fine ", count: 2000)
        let body = "<Error><Code>InternalError</Code><Message>\(message)</Message></Error>"
        #expect {
            try client.check(S3Client.Response(status: 500, body: body), "read", "laptop.imgbackup")
        } throws: { error in
            let message = (error as? ImgBackupError)?.message ?? ""
            let said = "failed to read backups/laptop.imgbackup in S3: the store answered 500 InternalError: "
            return message.hasPrefix(said) && message.count < 400
                && !message.contains("\u{1b}") && !message.contains("\n")
        }
    }

    @Test func hostileXMLIsReadAsText() {
        let xml = "<Error><Code>A&amp;B</Code><Message>line\u{1b}[31m&lt;x&gt;</Message></Error><Code>second"
        #expect(S3XML.values(of: "Code", in: xml) == ["A&B"])
        #expect(S3XML.values(of: "Message", in: xml) == ["line\u{1b}[31m<x>"])
        #expect(S3XML.values(of: "Key", in: xml).isEmpty)
    }
}

@Suite struct NBDKitS3Tests {
    @Test func nbdkitGetsTheBucketAndTheCacheButNeverTheKey() throws {
        let location = S3Location(
            endpoint: "https://s3.example", bucket: "backups", prefix: "hosts/laptop", credentials: .file("/etc/c"))
        let files = NBDKitS3.Files(directory: "/run/imgbackup/laptop/s3")
        let argv = try NBDKitS3.command(
            location: location, metadata: S3ImageMetadata(size: 1 << 40, objectSize: 1 << 20), files: files,
            readOnly: true)
        #expect(argv.contains("--filter=cache") && argv.contains("--readonly"))
        #expect(argv.contains("cache=writeback") && argv.contains("cache-min-block-size=1048576"))
        #expect(argv.contains("key=hosts/laptop") && argv.contains("size=1099511627776"))
        #expect(!argv.contains { $0.contains("secret") || $0.contains("access-key") })
        #expect(files.environment["AWS_SHARED_CREDENTIALS_FILE"] == "/run/imgbackup/laptop/s3/aws-credentials")
        #expect(NBDKitS3.awsConfig(location).contains("addressing_style = path"))
        #expect(NBDKitS3.wrapper(plugin: "/usr/lib/x/nbdkit-S3-plugin").contains("\"/usr/lib/x/nbdkit-S3-plugin\""))
        let credentials = S3Credentials(accessKeyID: "AKID", secretAccessKey: "s3cr3t", sessionToken: nil)
        let shared = credentials.sharedCredentialsFile().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
        #expect(shared == "[default]\naws_access_key_id = AKID\naws_secret_access_key = s3cr3t\n")
    }
}
