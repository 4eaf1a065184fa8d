import Foundation
import Testing

@testable import ImgBackupOS

#if canImport(Glibc)
    import Glibc
#endif

/// The watch's syncfs and its release; the failed write-back it exists to
/// report needs a remote that fills up: e2e/test_faults.py.
@Suite struct WriteBackWatchTests {
    @Test func syncsUntilReleasedAndThenHoldsNothingOpen() async throws {
        let scratch = ScratchDirectory()
        let watch = try WriteBackWatch(mountPoint: scratch.path)
        try await watch.sync(deadline: .seconds(30))
        let open = { () -> Int in
            let links = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return links.filter {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)")) == scratch.path
            }.count
        }
        #expect(open() == 1)
        watch.release()
        #expect(open() == 0)
        await #expect(throws: SystemCallError.self) { try await watch.sync(deadline: .seconds(30)) }
        watch.release()  // twice is fine
    }
}
