import ArgumentParser
import Foundation
import ImgBackupCore

struct SetupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setup",
        abstract: "Set up a new target: its key, an ssh key, the backup host's key, its table in the config.",
        discussion: """
            Beside the config file: NAME.key (the image's key: 64 random bytes, 0600), \
            NAME.ssh (an ed25519 key for the backup host) and known_hosts, none of them \
            overwritten. The backup host's key is shown and recorded only when you confirm \
            it on a terminal or name it with --host-key-fingerprint (ssh-keygen -lf \
            /etc/ssh/ssh_host_ed25519_key.pub on the backup host prints it). Then the \
            target's table is appended to the config, the authorized_keys line to install on \
            the backup host is printed, and doctor runs. Next: install that line, then \
            'imgbackup init NAME' and 'imgbackup run NAME' (docs/operations.md).
            """)

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The new target's name.")
    var target: String

    @Option(help: ArgumentHelp("The backup host and directory.", valueName: "user@host:/directory"))
    var remote: String

    @Option(help: "The backup host's ssh port.")
    var port = 22

    @Option(help: ArgumentHelp("The image's size (sparse: it costs what is written).", valueName: "size"))
    var size = "100G"

    @Option(help: "ext4 or btrfs.")
    var filesystem = "ext4"

    @Option(
        help: ArgumentHelp("Where the image is mounted while open (default: /mnt/imgbackup/NAME).", valueName: "path"))
    var mountPoint: String?

    @Option(
        name: .customLong("source"),
        help: ArgumentHelp(
            "What to back up with rsync snapshots (repeatable); none: add a [copy] table later.", valueName: "path"))
    var sources: [String] = []

    @Option(
        help: ArgumentHelp("The backup host key's fingerprint, checked instead of asking.", valueName: "SHA256:..."))
    var hostKeyFingerprint: String?

    func run() async throws {
        let location: RemoteLocation
        switch RemoteLocation.parse(remote) {
        case .success(let parsed): location = parsed
        case .failure(let failure):
            throw ImgBackupError(
                .usage, "--remote '\(remote)': \(failure.reason)", hint: "give it as user@host:/directory")
        }
        guard let parsedFilesystem = Target.Filesystem(rawValue: filesystem) else {
            throw ImgBackupError(.usage, "--filesystem '\(filesystem)' is not one of ext4, btrfs")
        }
        let environment = OperationEnvironment(
            paths: RuntimePaths.fromEnvironment(ProcessInfo.processInfo.environment), logger: .init(label: "imgbackup"),
            configPath: global.configPath)
        if let mountPoint, !mountPoint.hasPrefix("/") {
            throw ImgBackupError(.usage, "--mount-point '\(mountPoint)' is not an absolute path")
        }
        var request = SetupOperation.Request(
            name: target, remote: location, port: port, size: size, filesystem: parsedFilesystem, sources: sources,
            configPath: global.configPath)
        request.mountPoint = mountPoint
        let setup = SetupOperation(request: request, runner: environment.runner)
        try setup.refuseAnExistingTarget()

        let offered = try await setup.scanHostKeys()
        print("\(location.host) port \(port) offers:")
        for key in offered { print("  \(key.type) \(key.fingerprint)") }
        let trusted = try hostKey(offered, host: location.host)

        for made in try await setup.makeKeys() { global.say("made \(made)") }
        try setup.record(trusted)
        global.say("recorded the \(trusted.type) key of \(location.host) in \(setup.knownHosts)")
        let written = try setup.writeTarget()
        global.say("added [target.\(target)] to \(global.configPath)")

        guard let publicKey = try? String(contentsOfFile: setup.sshKey + ".pub", encoding: .utf8) else {
            throw ImgBackupError(.system, "failed to read \(setup.sshKey).pub")
        }
        print("")
        print(
            "Install this line in ~\(location.user ?? "USER")/.ssh/authorized_keys on \(location.host) (docs/remote-setup.md):"
        )
        print(try AuthorizedKeysLine(target: written, publicKey: publicKey).render())
        print("")
        print(
            "Keep a copy of \(setup.keyFile) away from this machine and the backup host: without it the image is noise."
        )
        print("doctor (the remote fails until the line is installed):")
        for finding in await DoctorCommand.findings([written], environment: environment) {
            print("  \(finding)".escapingControlCharacters)
        }
        print("Then: imgbackup init \(target) && imgbackup run \(target)")
    }

    /// The key a person vouched for: named by fingerprint, or confirmed on a terminal. Never silently.
    func hostKey(_ offered: [SetupOperation.HostKey], host: String) throws -> SetupOperation.HostKey {
        if let hostKeyFingerprint {
            return try SetupOperation.vouched(hostKeyFingerprint, among: offered, host: host)
        }
        let preferred = offered.first { $0.type == "ED25519" } ?? offered[0]
        guard isatty(STDIN_FILENO) != 0 else {
            throw ImgBackupError(
                .refused, "not recording the host key of \(host) unchecked (no terminal to ask on)",
                hint:
                    "run ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the backup host and pass what it prints as --host-key-fingerprint"
            )
        }
        FileHandle.standardError.write(
            Data(
                "Is \(preferred.fingerprint) the \(preferred.type) key of \(host)? Compare it with 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' run there. Type yes to record it: "
                    .utf8))
        guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
            throw ImgBackupError(.refused, "the host key of \(host) was not confirmed: nothing was set up")
        }
        return preferred
    }
}
