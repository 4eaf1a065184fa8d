import Foundation
import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// The real kernel interfaces behind bytes on the wire: another process's
/// TCP counters (borrowed through pidfd_getfd), a cap on what it sends, and
/// the process at the other end of a unix socket pair.
@Suite struct TCPConnectionsTests {
    /// A child that connects to `port`, sends `bytes`, and waits; its
    /// stdin is one end of a socket pair whose other end this process keeps.
    func child(port: UInt16, bytes: Int, stdin: Int32) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [
            "-c",
            "import socket, time; s = socket.create_connection(('127.0.0.1', \(port))); "
                + "s.sendall(b'x' * \(bytes)); time.sleep(30)",
        ]
        process.standardInput = FileHandle(fileDescriptor: stdin, closeOnDealloc: false)
        try process.run()
        return process
    }

    @Test func countsAnotherProcesssTrafficCapsItAndFindsItThroughItsSocketPair() async throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(listener >= 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        #expect(listen(listener, 1) == 0)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]) }

        let process = try child(port: UInt16(bigEndian: address.sin_port), bytes: 100_000, stdin: pair[1])
        close(pair[1])
        defer { process.terminate() }
        let accepted = accept(listener, nil, nil)
        #expect(accepted >= 0)
        defer { close(accepted) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var received = 0
        while received < 100_000 {
            let count = read(accepted, &buffer, buffer.count)
            if count <= 0 { break }
            received += count
        }

        let traffic = TCPConnections.traffic(of: process.processIdentifier)
        #expect(traffic.count == 1)
        #expect(traffic.values.first?.sent == 100_000)
        #expect(TCPConnections.limitSending(of: process.processIdentifier, bytesPerSecond: 1 << 20) == 1)
        // Our end of the pair leads to the child.
        #expect(TCPConnections.unixPeers(of: getpid()).contains(process.processIdentifier))
    }
}
