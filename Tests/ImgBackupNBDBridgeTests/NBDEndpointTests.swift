import ImgBackupCore
import ImgBackupOS
import Testing

@testable import ImgBackupNBDBridge

@Suite struct NBDEndpointTests {
    @Test func commandRunsThroughSSHWithEveryWordQuoted() throws {
        var target = Target(
            name: "t", remote: try RemoteLocation.parse("backup@host:/srv").get(), image: "t.img", key: .file("/k"),
            mountPoint: "/mnt/t")
        target.port = 2222
        target.identityFile = "/root/.ssh/id"
        target.sshOptions = ["StrictHostKeyChecking=yes"]
        target.nbd = .command(["nbdkit", "--single", "file", "/srv/it's here/$(id).img"])
        guard case .command(let argv) = try NBDEndpointBuilder.endpoint(for: target) else {
            Issue.record("expected a command")
            return
        }
        #expect(argv.first?.hasSuffix("/ssh") == true)
        #expect(Array(argv[1...3]) == ["-T", "-p", "2222"])
        #expect(argv.contains("IdentityFile=/root/.ssh/id"))
        #expect(argv.contains("StrictHostKeyChecking=yes"))
        #expect(argv.contains("BatchMode=yes"))
        #expect(
            Array(argv.suffix(3)) == [
                "backup@host", "--", #"'nbdkit' '--single' 'file' '/srv/it'\''s here/$(id).img'"#,
            ])
    }

    @Test func uriIsPassedAsIs() throws {
        var target = Target(
            name: "t", remote: try RemoteLocation.parse("h:/srv").get(), image: "t.img", key: .file("/k"),
            mountPoint: "/mnt/t")
        target.nbd = .uri("nbd://h:10809/x")
        #expect(try NBDEndpointBuilder.endpoint(for: target) == .uri("nbd://h:10809/x"))
    }
}
