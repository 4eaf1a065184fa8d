import Testing

@testable import ImgBackupCore

/// The first full example config: every release must still accept it.
let firstFullExample = """
    [target.offsite]
    remote        = "backup@backup-host:/srv/backups/laptop"  # ssh destination : directory
    port          = 22
    identity_file = "/root/.ssh/imgbackup_ed25519"
    ssh_options   = ["StrictHostKeyChecking=yes"]             # passed to ssh/sshfs as -o
    image         = "laptop.img"                              # file in the remote directory
    size          = "50G"
    filesystem    = "ext4"                                    # ext4 | btrfs
    transport     = "sshfs"                                   # sshfs | nbd (trim always uses nbd)
    key_file      = "/etc/imgbackup/offsite.key"              # or key_command = ["pass", "show", "imgbackup/offsite"]
    mount_point   = "/mnt/imgbackup/offsite"

    [target.offsite.nbd]
    command = ["nbdkit", "--single", "--exit-with-parent", "file", "/srv/backups/laptop/laptop.img"]

    [target.offsite.copy]
    method  = "rsync"               # rsync | borg | btrfs-send | command
    sources = ["/etc", "/home"]
    exclude = ["/home/*/.cache"]

    [target.offsite.retention]
    keep_daily = 7
    keep_weekly = 4
    keep_monthly = 12

    [target.offsite.timeouts]
    stall    = "120s"
    teardown = "30s"
    """

@Suite struct ConfigLoaderTests {
    @Test func acceptsTheFirstFullExample() throws {
        let config = try ConfigLoader.parse(firstFullExample, path: "/etc/imgbackup/imgbackup.toml")
        let target = try config.target(named: "offsite")
        #expect(target.remote == RemoteLocation(user: "backup", host: "backup-host", directory: "/srv/backups/laptop"))
        #expect(target.port == 22)
        #expect(target.identityFile == "/root/.ssh/imgbackup_ed25519")
        #expect(target.sshOptions == ["StrictHostKeyChecking=yes"])
        #expect(target.image == "laptop.img")
        #expect(target.size == ByteSize(bytes: 50 << 30))
        #expect(target.filesystem == .ext4)
        #expect(target.transport == .sshfs)
        #expect(target.key == .file("/etc/imgbackup/offsite.key"))
        #expect(target.mountPoint == "/mnt/imgbackup/offsite")
        #expect(
            target.nbd
                == .command(["nbdkit", "--single", "--exit-with-parent", "file", "/srv/backups/laptop/laptop.img"]))
        #expect(target.copy?.method == .rsync)
        #expect(target.copy?.sources == ["/etc", "/home"])
        #expect(target.copy?.exclude == ["/home/*/.cache"])
        #expect(target.retention == Target.Retention(keepDaily: 7, keepWeekly: 4, keepMonthly: 12))
        #expect(target.timeouts.stall == .seconds(120))
        #expect(target.timeouts.teardown == .seconds(30))
        #expect(target.pbkdf == .strong, "the default key derivation must stay strong")
        #expect(target.mappingName == "imgbackup-offsite")
    }

    @Test func defaultsForOptionalKeys() throws {
        let config = try ConfigLoader.parse(
            """
            [target.min]
            remote = "host:/backups"
            key_command = ["pass", "show", "imgbackup/min"]
            """, path: "c.toml")
        let target = try config.target(named: "min")
        #expect(target.port == 22)
        #expect(target.image == "min.img")
        #expect(target.mountPoint == "/mnt/imgbackup/min")
        #expect(target.key == .command(["pass", "show", "imgbackup/min"]))
        #expect(target.size == nil)
        #expect(target.timeouts == Target.Timeouts())
    }

    /// A key from a systemd credential or the command line needs none in the config.
    @Test func aTargetWithNoKeySourceLoadsAndAsksForOneWhenUsed() throws {
        let config = try ConfigLoader.parse("[target.cred]\nremote = \"host:/backups\"\n", path: "c.toml")
        #expect(try config.target(named: "cred").key == .unset)
    }

    @Test func aBandwidthLimitIsBytesASecond() throws {
        let config = try ConfigLoader.parse(
            "[target.capped]\nremote = \"h:/c\"\nkey_file = \"/k\"\nbandwidth_limit = \"2M\"\n", path: "c.toml")
        #expect(try config.target(named: "capped").bandwidthLimit?.bytes == 2 << 20)
        #expect(
            try ConfigLoader.parse("[target.free]\nremote = \"h:/f\"\n", path: "c.toml").target(named: "free")
                .bandwidthLimit == nil)
    }

    @Test func targetsKeepFileOrder() throws {
        let config = try ConfigLoader.parse(
            """
            [target.zeta]
            remote = "h:/z"
            key_file = "/k"
            [target.alpha]
            remote = "h:/a"
            key_file = "/k"
            """, path: "c.toml")
        #expect(config.targets.map(\.name) == ["zeta", "alpha"])
    }

    /// Each bad input: the message names file, line and key.
    @Test(arguments: [
        ("size = \"50X\"", "c.toml:4: target.t.size: '50X' is not a size"),
        ("port = \"22\"", "c.toml:4: target.t.port: expected an integer, found a TOML string"),
        ("port = 70000", "c.toml:4: target.t.port: 70000 is not a TCP port"),
        ("colour = \"blue\"", "c.toml:4: target.t.colour: unknown key"),
        ("identity_file = \"id_ed25519\"", "c.toml:4: target.t.identity_file: 'id_ed25519' must be an absolute path"),
        ("mount_point = \"mnt\"", "c.toml:4: target.t.mount_point: 'mnt' must be an absolute path"),
        ("filesystem = \"xfs\"", "c.toml:4: target.t.filesystem: 'xfs' is not one of \"ext4\", \"btrfs\""),
        ("ssh_options = \"-v\"", "c.toml:4: target.t.ssh_options: expected an array of strings"),
        ("ssh_options = [1]", "c.toml:4: target.t.ssh_options: expected an array of strings, found a TOML int"),
        ("image = \"../x.img\"", "c.toml:4: target.t.image: '../x.img' must be a plain file name"),
        ("size = \"1M\"", "c.toml:4: target.t.size: 1 MiB is too small"),
        ("bandwidth_limit = \"fast\"", "c.toml:4: target.t.bandwidth_limit: 'fast' is not a size"),
        ("bandwidth_limit = \"1K\"", "c.toml:4: target.t.bandwidth_limit: 1 KiB a second is too little"),
        ("key_command = [\"pass\"]", "c.toml:4: target.t.key_command: give key_file or key_command, not both"),
        ("transport = \"nbd\"", "c.toml:4: target.t.transport: is nbd but there is no [target.t.nbd] table"),
    ])
    func badValueNamesFileLineAndKey(line: String, expected: String) {
        let text = """
            [target.t]
            remote = "h:/backups"
            key_file = "/etc/k"
            \(line)
            """
        let error = #expect(throws: ImgBackupError.self) { try ConfigLoader.parse(text, path: "c.toml") }
        #expect(error?.code == .config)
        #expect(error?.message.hasPrefix(expected) == true, "got: \(error?.message ?? "nothing")")
    }

    @Test(arguments: [
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.timeouts]\nstall = \"soon\"\n",
            "c.toml:5: target.t.timeouts.stall: 'soon' is not a duration"
        ),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.copy]\nmethod = \"rsync\"\nsource = [\"/etc\"]\n",
            "c.toml:4: target.t.copy.sources: rsync needs at least one source"
        ),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.nbd]\nuri = \"http://x\"\n",
            "c.toml:5: target.t.nbd.uri: 'http://x' is not an NBD URI"
        ),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.retention]\nkeep_daily = -1\n",
            "c.toml:5: target.t.retention.keep_daily: must not be negative"
        ),
        (
            "[target.t]\nremote = \"h:backups\"\nkey_file = \"/k\"\n",
            "c.toml:2: target.t.remote: 'h:backups' is not [user@]host:/directory"
        ),
        ("[target.t]\nkey_file = \"/k\"\n", "c.toml:1: target.t: missing required key 'remote'"),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_command = []\n",
            "c.toml:3: target.t.key_command: must be a non-empty argv"
        ),
        // The TOML parser underneath asserts on these instead of reporting them.
        ("[=target.t]\nremote = \"h:/b\"\n", "c.toml:1: invalid TOML: '[' must be followed by a table name"),
        ("[[[target.t]\n", "c.toml:1: invalid TOML: '[' must be followed by a table name"),
        (
            "[target.t]\nremote = \"h:/b\"\nssh_options = [}\"a=b\"]\n",
            "c.toml:3: invalid TOML: expected a value before '}'"
        ),
        // A value with a newline in it stays one line in the message.
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\nssh_options = [\"A=b\\nProxyCommand=x\"]\n",
            "c.toml:4: target.t.ssh_options: 'A=b\\nProxyCommand=x' is not an ssh option"
        ),
        // CRLF line ends: the line number is still right.
        (
            "[target.t]\r\nremote = \"h:/b\"\r\nkey_file = \"/k\"\r\nport = 0\r\n",
            "c.toml:4: target.t.port: 0 is not a TCP port"
        ),
        ("[targets.t]\nremote = \"h:/b\"\n", "c.toml:1: targets: unknown key"),
        (
            "[target.\"bad name\"]\nremote = \"h:/b\"\nkey_file = \"/k\"\n",
            "c.toml:1: target.bad name: target name 'bad name'"
        ),
        ("[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\nport = \n", "c.toml:4: invalid TOML"),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.copy]\nmethod = \"btrfs-send\"\nsource_subvolume = \"/srv/@root\"\n",
            "c.toml:5: target.t.copy.method: btrfs-send receives into a btrfs image, but filesystem is ext4"
        ),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.hooks]\npre = [\"systemctl\", \"stop\", \"db\"]\n",
            "c.toml:5: target.t.hooks.pre: expected an array of commands (each an array of strings), found a TOML string"
        ),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.hooks]\npost = [[]]\n",
            "c.toml:5: target.t.hooks.post: a command must not be empty"
        ),
        (
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.copy]\nmethod = \"borg\"\nsources = [\"/etc\"]\nborg_passphrase_file = \"pass\"\n",
            "c.toml:7: target.t.copy.borg_passphrase_file: 'pass' must be an absolute path"
        ),
        (
            "[metrics]\ndirectory = \"node-exporter\"\n",
            "c.toml:2: metrics.directory: 'node-exporter' must be an absolute path"
        ),
        ("[metrics]\npath = \"/x\"\n", "c.toml:2: metrics.path: unknown key"),
    ])
    func badTablesNameFileLineAndKey(text: String, expected: String) {
        let error = #expect(throws: ImgBackupError.self) { try ConfigLoader.parse(text, path: "c.toml") }
        #expect(error?.code == .config)
        #expect(error?.message.hasPrefix(expected) == true, "got: \(error?.message ?? "nothing")")
    }

    @Test func metricsGoWhereTheMetricsTableSays() throws {
        let target = "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n"
        #expect(try ConfigLoader.parse(target, path: "c.toml").metricsDirectory == nil)
        let config = try ConfigLoader.parse(
            "[metrics]\ndirectory = \"/var/lib/node-exporter\"\n" + target, path: "c.toml")
        #expect(config.metricsDirectory == "/var/lib/node-exporter")
        #expect(RuntimePaths().metricsDirectory == "/var/lib/imgbackup/metrics")
    }

    @Test func hooksAndCopyOptions() throws {
        let config = try ConfigLoader.parse(
            """
            [target.t]
            remote = "h:/b"
            key_file = "/k"
            filesystem = "btrfs"
            [target.t.hooks]
            pre = [["systemctl", "stop", "db"], ["/usr/local/bin/dump"]]
            post = [["systemctl", "start", "db"]]
            [target.t.copy]
            method = "btrfs-send"
            source_subvolume = "/srv/@root"
            snapshot_directory = "/srv/.snapshots"
            quiesce_command = ["fsfreeze", "-f", "/srv"]
            resume_command = ["fsfreeze", "-u", "/srv"]
            """, path: "c.toml")
        let target = try config.target(named: "t")
        #expect(target.hooks.pre == [["systemctl", "stop", "db"], ["/usr/local/bin/dump"]])
        #expect(target.hooks.post == [["systemctl", "start", "db"]])
        #expect(target.copy?.snapshotDirectory == "/srv/.snapshots")
        #expect(target.copy?.quiesceCommand == ["fsfreeze", "-f", "/srv"])
        #expect(target.copy?.resumeCommand == ["fsfreeze", "-u", "/srv"])
    }

    @Test func unknownTargetListsTheKnownOnes() throws {
        let config = try ConfigLoader.parse(firstFullExample, path: "/etc/imgbackup/imgbackup.toml")
        let error = #expect(throws: ImgBackupError.self) { try config.target(named: "nope") }
        #expect(error?.description == "target 'nope' is not in /etc/imgbackup/imgbackup.toml (known targets: offsite)")
    }

    @Test func missingFileIsAConfigError() {
        let error = #expect(throws: ImgBackupError.self) { try ConfigLoader.load(path: "/nonexistent/imgbackup.toml") }
        #expect(error?.code.exitStatus == 1)
        #expect(error?.message == "failed to read config /nonexistent/imgbackup.toml: no such file")
    }

    @Test func configPathPrecedence() {
        #expect(ConfigLoader.resolvePath(explicit: "/a", environment: ["IMGBACKUP_CONFIG": "/b"]) == "/a")
        #expect(ConfigLoader.resolvePath(explicit: nil, environment: ["IMGBACKUP_CONFIG": "/b"]) == "/b")
        #expect(ConfigLoader.resolvePath(explicit: nil, environment: [:]) == "/etc/imgbackup/imgbackup.toml")
    }

    @Test func cheapKeyDerivationOnlyWhenAskedFor() throws {
        let config = try ConfigLoader.parse(
            "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.luks]\npbkdf = \"pbkdf2\"\npbkdf_iterations = 1000\n",
            path: "c.toml")
        #expect(try config.target(named: "t").pbkdf == .init(kind: .pbkdf2, forcedIterations: 1000))
        let error = #expect(throws: ImgBackupError.self) {
            try ConfigLoader.parse(
                "[target.t]\nremote = \"h:/b\"\nkey_file = \"/k\"\n[target.t.luks]\npbkdf = \"pbkdf2\"\npbkdf_iterations = 10\n",
                path: "c.toml")
        }
        #expect(error?.message.hasPrefix("c.toml:6: target.t.luks.pbkdf_iterations") == true)
    }
}
