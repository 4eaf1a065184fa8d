import Foundation
import Testing

@testable import ImgBackupOS

/// /proc files report size 0 and are generated per read: Foundation's readers
/// stopped after about 4 KiB of them (mountinfo on a machine with many mounts).
@Suite struct KernelFileTests {
    @Test func aProcFileComesBackWholePastTheFirstPage() throws {
        // This process's memory map runs well past 4 KiB (the Swift runtime's
        // libraries); its last line is the stack or the vsyscall page.
        let maps = try #require(KernelFile.text("/proc/self/maps"))
        #expect(maps.utf8.count > 8192)
        #expect(maps.hasSuffix("\n"))
        let last = try #require(maps.split(separator: "\n").last)
        #expect(last.hasSuffix("[stack]") || last.hasSuffix("[vsyscall]") || last.hasSuffix("[vdso]"), "\(last)")
    }

    @Test func aMissingFileIsNil() {
        #expect(KernelFile.data("/proc/self/no-such-file") == nil)
    }
}
