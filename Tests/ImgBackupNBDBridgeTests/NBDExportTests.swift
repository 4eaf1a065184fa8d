import Foundation
import ImgBackupOS
import Testing

@testable import ImgBackupNBDBridge

/// The real libnbd client, event loops and multi-conn against a real nbdkit (memory
/// plugin, unix socket) on the host: no kernel NBD support needed.
@Suite(.serialized) struct NBDExportTests {
    /// Starts `nbdkit memory SIZE` on a fresh socket; stops it at the end.
    func withServer(size: String = "64M", _ body: (String) async throws -> Void) async throws {
        let scratch = ScratchDirectory()
        let socket = "\(scratch.path)/nbd.sock"
        // nbdkit writes its pid file once it listens; the socket exists from
        // bind(), a moment before: connecting then was refused under load.
        let ready = "\(scratch.path)/nbdkit.pid"
        let server = Process()
        server.executableURL = URL(fileURLWithPath: try ExecutableLocator.locate("nbdkit"))
        server.arguments = ["--exit-with-parent", "--unix", socket, "--pidfile", ready, "memory", size]
        try server.run()
        defer {
            // SIGKILL: on SIGTERM nbdkit waits for its client to disconnect.
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
        }
        for _ in 0..<200 where access(ready, F_OK) != 0 { try await Task.sleep(for: .milliseconds(50)) }
        try await body("nbd+unix:///?socket=\(socket)")
    }

    func connect(_ uri: String, connections: Int = 1) throws -> (NBDConnection, NBDExport) {
        var opened: [NBDConnection] = []
        for _ in 0..<connections {
            let connection = try NBDConnection(name: "test")
            try connection.connect(.uri(uri))
            opened.append(connection)
        }
        return (opened[0], try NBDExport(connections: opened))
    }

    @Test func readsWritesTrimsAndReportsAllocation() async throws {
        try await withServer { uri in
            let (connection, loop) = try connect(uri)
            #expect(connection.size == 64 << 20)
            #expect(connection.canTrim && connection.canZero && connection.canFlush)
            #expect(connection.canReportAllocation)
            #expect(loop.allocatedBytes(size: 64 << 20) == .success(0))

            var data = [UInt8](repeating: 0, count: 4 << 20)
            for index in data.indices { data[index] = UInt8(truncatingIfNeeded: index &* 31 &+ 7) }
            #expect(data.withUnsafeBytes { loop.write(from: $0.baseAddress!, count: $0.count, offset: 1 << 20) } == 0)
            #expect(loop.flush() == 0)
            var back = [UInt8](repeating: 0, count: 4 << 20)
            #expect(
                back.withUnsafeMutableBytes { loop.read(into: $0.baseAddress!, count: $0.count, offset: 1 << 20) } == 0)
            #expect(back == data)
            #expect(try loop.allocatedBytes(size: 64 << 20).get() >= 4 << 20)

            // A trim larger than one request is split, and all of it happens.
            #expect(loop.trim(count: 20 << 20, offset: 0) == 0)
            #expect(loop.allocatedBytes(size: 64 << 20) == .success(0))
            #expect(
                back.withUnsafeMutableBytes { loop.read(into: $0.baseAddress!, count: $0.count, offset: 1 << 20) } == 0)
            #expect(back.allSatisfy { $0 == 0 })
        }
    }

    @Test func manyConcurrentRequestsAllComplete() async throws {
        try await withServer { uri in
            let (_, loop) = try connect(uri)
            await withTaskGroup(of: Bool.self) { group in
                for block in 0..<64 {
                    group.addTask {
                        var chunk = [UInt8](repeating: UInt8(block), count: 256 << 10)
                        let offset = UInt64(block) * UInt64(256 << 10)
                        guard
                            chunk.withUnsafeBytes({ loop.write(from: $0.baseAddress!, count: $0.count, offset: offset) }
                            ) == 0
                        else { return false }
                        chunk = [UInt8](repeating: 0xff, count: 256 << 10)
                        guard
                            chunk.withUnsafeMutableBytes({
                                loop.read(into: $0.baseAddress!, count: $0.count, offset: offset)
                            }) == 0
                        else { return false }
                        return chunk.allSatisfy { $0 == UInt8(block) }
                    }
                }
                for await ok in group { #expect(ok) }
            }
        }
    }

    /// nbdkit's memory plugin advertises multi-conn: writes spread over four
    /// connections are all read back, through whichever connection.
    @Test func multiConnSpreadsRequestsOverEveryConnection() async throws {
        try await withServer { uri in
            let (connection, export) = try connect(uri, connections: 4)
            #expect(connection.canMultiConn)
            #expect(export.connectionCount == 4)
            await withTaskGroup(of: Bool.self) { group in
                for block in 0..<32 {
                    group.addTask {
                        let chunk = [UInt8](repeating: UInt8(block + 1), count: 128 << 10)
                        let offset = UInt64(block) * UInt64(128 << 10)
                        return chunk.withUnsafeBytes {
                            export.write(from: $0.baseAddress!, count: $0.count, offset: offset)
                        } == 0
                    }
                }
                for await ok in group { #expect(ok) }
            }
            #expect(export.flush() == 0)
            for loop in export.loops { #expect(loop.issued.load(ordering: .relaxed) >= 8) }
            for block in 0..<32 {
                var back = [UInt8](repeating: 0, count: 128 << 10)
                #expect(
                    back.withUnsafeMutableBytes {
                        export.read(into: $0.baseAddress!, count: $0.count, offset: UInt64(block) * UInt64(128 << 10))
                    } == 0)
                #expect(back.allSatisfy { $0 == UInt8(block + 1) })
            }
        }
    }

    @Test func aDeadServerFailsRequestsInsteadOfHanging() async throws {
        var loop: NBDExport?
        try await withServer { uri in loop = try connect(uri).1 }
        // The server is gone now.
        var buffer = [UInt8](repeating: 0, count: 4096)
        let error = buffer.withUnsafeMutableBytes { loop!.read(into: $0.baseAddress!, count: $0.count, offset: 0) }
        #expect(error != 0)
        #expect(loop!.flush() != 0)
    }

    @Test func refusedConnectionNamesTheProblem() throws {
        let connection = try NBDConnection(name: "test")
        let error = #expect(throws: NBDError.self) {
            try connection.connect(.uri("nbd+unix:///?socket=/nonexistent/sock"))
        }
        #expect(error?.message.isEmpty == false)
    }
}
