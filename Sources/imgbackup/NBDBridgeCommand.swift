import ArgumentParser
import Foundation
import ImgBackupCore
import ImgBackupNBDBridge
import Logging

/// Internal: the NBD bridge process that `open --transport nbd` starts in the
/// background and `close` stops. Not for direct use.
struct NBDBridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: NBDBridgeLayer.subcommand, abstract: "Serve a target's NBD export as a FUSE file (internal).",
        shouldDisplay: false)

    @OptionGroup var global: GlobalOptions

    @Argument var target: String

    @Option(help: "Where to mount the one-file filesystem.")
    var mount: String

    @Flag(help: "Fail when the server cannot trim.")
    var requireTrim = false

    @Option(help: "FUSE worker threads, each with up to one NBD request in flight (benchmarks use 1).")
    var threads: UInt32 = 16

    @Flag(help: "S3: serve read-only; take no lock, refuse a held one.")
    var readOnly = false

    @Flag(help: "S3: take the lock from whoever holds it.")
    var breakLock = false

    @Option(help: "S3, for init: the new image's size in bytes.")
    var createSize: UInt64?

    func run() async throws {
        let config = try global.load()
        var service = BridgeService(
            target: try config.target(named: target), mountPoint: mount, requireTrim: requireTrim, threads: threads,
            logger: Logger(label: "imgbackup-nbd"))
        service.readOnly = readOnly
        service.breakLock = breakLock
        service.createSize = createSize
        service.paths = RuntimePaths.fromEnvironment(ProcessInfo.processInfo.environment)
        try await service.run()
    }
}
