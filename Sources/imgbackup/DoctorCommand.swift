import ArgumentParser
import ImgBackupCore
import ImgBackupNBDBridge

struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check what runs need (kernel, programs, FUSE, keys, the remote) and say how to fix each gap.",
        discussion: """
            One line per check: ok, WARN or FAIL, with the fix after '->'. Checks this \
            machine (root, device-mapper, dm-crypt, loop, FUSE, fusectl), then per target \
            the programs its config needs, that its key loads (key files and credentials \
            are read and wiped; key_command is not run), and the remote over SFTP with the \
            target's ssh settings: reachable, the directory there, the image, free space. \
            Exits 0 when nothing blocks a run, else with the status that run would fail \
            with (5 key, 6 remote, 7 this machine).
            """)

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The target, a [target.NAME] table of the config (default: every target).")
    var target: String?

    func run() async throws {
        let config = try global.load()
        let environment = global.environment(config)
        let names = target.map { [$0] } ?? config.targets.map(\.name)
        // The key sources of the config and the service's credentials, as a run would see them.
        var noOverride = KeyOptions()
        noOverride.keyFile = nil
        noOverride.keyDescriptor = nil
        var targets: [Target] = []
        for name in names {
            targets.append(try global.target(name, in: config, keys: noOverride))
        }
        let findings = await Self.findings(targets, environment: environment)
        for finding in findings { print("\(finding)".escapingControlCharacters) }
        let status = DoctorOperation.exitStatus(findings)
        if status != 0 { throw ExitCode(status) }
    }

    /// What doctor finds for `targets` (also `setup`'s last step).
    static func findings(_ targets: [Target], environment: OperationEnvironment) async -> [DoctorFinding] {
        let runner = environment.runner
        return await DoctorOperation(
            targets: targets,
            system: SystemInspector(
                runner: runner, paths: environment.paths,
                nbd: { await BridgeService.look(at: $0, deadline: SystemInspector.remoteLimit) })
        ).run { target in
            do {
                _ = try await KeyLoader.load(target.key, target: target.name, runner: runner)  // wiped on release
                return nil
            } catch let error as ImgBackupError {
                return error
            } catch {
                return ImgBackupError.wrapping(error, .badKey, failedTo: "load the key of '\(target.name)'")
            }
        }
    }
}
