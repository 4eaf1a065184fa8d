import Testing

@testable import ImgBackupNBDBridge

/// The numbers an NBD server reports are the remote's to choose.
@Suite struct BlockStatusTests {
    /// Block status from a server that claims to cover more than asked, or
    /// everything at once: the scan never passes the export's end nor traps.
    static let blockStatusCases:
        [(offset: UInt64, size: UInt64, covered: UInt64, allocated: UInt64, step: UInt64, counted: UInt64)] = [
            (0, 1 << 30, .max, .max, 1 << 30, 1 << 30),
            (1 << 29, 1 << 30, 4096, 8192, 4096, 4096),
            ((1 << 30) - 1, 1 << 30, 1 << 31, 0, 1, 0),
        ]

    @Test func blockStatusAnswersAreClampedToTheExport() throws {
        for answer in Self.blockStatusCases {
            let step = try #require(
                NBDExport.step(
                    offset: answer.offset, size: answer.size, covered: answer.covered, allocated: answer.allocated))
            #expect(step.covered == answer.step && step.allocated == answer.counted)
            #expect(NBDExport.step(offset: answer.offset, size: answer.size, covered: 0, allocated: 0) == nil)
            #expect(NBDExport.step(offset: answer.size, size: answer.size, covered: 4096, allocated: 0) == nil)
        }
    }
}
