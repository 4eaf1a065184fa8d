import Foundation
import ImgBackupOS

/// How the NBD bridge serves an S3 image: nbdkit's S3 plugin (Debian's
/// nbdkit-plugin-python with python3-boto3), run locally as the bridge's
/// NBD command, through a small wrapper of ours. The wrapper changes three
/// things: the block size nbdkit 1.32's plugin declares (its minimum is the
/// object size, which nbdkit refuses above 64 KiB; any request size works,
/// partial objects are read, changed and written whole), boto3's timeouts
/// and retries (a store that stops answering must not hold a request for
/// minutes), and its connection pool (one per nbdkit thread).
public enum NBDKitS3 {
    /// Where Debian puts the plugin, by architecture.
    public static func pluginPath() -> String? {
        let candidates = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib"))?.sorted() ?? []
        return candidates.lazy.map { "/usr/lib/\($0)/nbdkit/plugins/nbdkit-S3-plugin" }
            .first { FileManager.default.isReadableFile(atPath: $0) }
    }

    static func wrapper(plugin: String) -> String {
        """
        # imgbackup's wrapper around nbdkit's S3 plugin (written by imgbackup
        # at each open; see NBDKitS3.swift).
        import importlib.machinery
        import importlib.util

        import boto3
        import botocore.config

        _loader = importlib.machinery.SourceFileLoader("nbdkit_s3", \(pythonString(plugin)))
        _spec = importlib.util.spec_from_loader("nbdkit_s3", _loader)
        _s3 = importlib.util.module_from_spec(_spec)
        _loader.exec_module(_s3)

        API_VERSION = 2

        _client_config = botocore.config.Config(
            connect_timeout=10, read_timeout=60, max_pool_connections=16,
            retries={"max_attempts": 3, "mode": "standard"})


        class _Boto3:
            @staticmethod
            def client(*args, **kwargs):
                return boto3.client(*args, config=_client_config, **kwargs)


        _s3.boto3 = _Boto3

        for _name in ("thread_model", "can_write", "can_multi_conn", "can_trim", "can_zero", "can_fast_zero",
                      "can_cache", "is_rotational", "can_fua", "can_extents", "can_flush", "config",
                      "config_complete", "open", "get_size", "pread", "pwrite", "trim", "zero", "flush"):
            globals()[_name] = getattr(_s3, _name)


        def block_size(server):
            return (1, _s3.cfg.obj_size, 0xffffffff)

        """
    }

    private static func pythonString(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// boto3's configuration (not secret): region and addressing style.
    static func awsConfig(_ location: S3Location) -> String {
        "[default]\nregion = \(location.region)\ns3 =\n    addressing_style = \(location.addressing.rawValue)\n"
    }

    /// The files nbdkit reads, in the target's runtime directory (mode 0700,
    /// on tmpfs): the wrapper, boto3's config, and the credentials, which
    /// the bridge removes once nbdkit has connected (boto3 reads them when
    /// the connection opens).
    public struct Files: Sendable {
        public let directory: String
        public var wrapper: String { "\(directory)/nbdkit-s3.py" }
        public var config: String { "\(directory)/aws-config" }
        public var credentials: String { "\(directory)/aws-credentials" }

        public init(directory: String) { self.directory = directory }

        public func write(location: S3Location, key: S3Credentials, plugin: String) throws(SystemCallError) {
            try LocalFiles.makeDirectories(directory)
            try LocalFiles.writeAtomically(wrapper, NBDKitS3.wrapper(plugin: plugin), mode: 0o600)
            try LocalFiles.writeAtomically(config, NBDKitS3.awsConfig(location), mode: 0o600)
            let text = key.sharedCredentialsFile().withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            try LocalFiles.writeAtomically(credentials, text, mode: 0o600)
        }

        public func removeCredentials() { unlink(credentials) }

        /// After the session: nothing of it stays in the runtime directory.
        public func removeAll() {
            for file in [credentials, wrapper, config] { unlink(file) }
            LocalFiles.removeDirectoryIfEmpty(directory)
        }

        /// Read by boto3 in nbdkit, inherited from the bridge: paths only.
        public var environment: [String: String] {
            [
                "AWS_SHARED_CREDENTIALS_FILE": credentials, "AWS_CONFIG_FILE": config, "AWS_PROFILE": "default",
                "AWS_EC2_METADATA_DISABLED": "true",
            ]
        }
    }

    /// How much of the image nbdkit's cache filter may hold on this
    /// machine's disk (in `$TMPDIR`, /var/tmp by default: ciphertext only).
    static func cacheLimit(objectSize: UInt64) -> UInt64 { max(256 << 20, 16 * objectSize) }

    /// nbdkit serving the image on stdin/stdout (libnbd's command endpoint).
    ///
    /// Through nbdkit's cache filter in writeback mode, in blocks of one
    /// object: the bridge hands nbdkit 128 KiB requests, and the plugin
    /// turns each partial-object write into a GET of the rest and a PUT of
    /// the whole object, so a 1 MiB write cost eight PUTs of 1 MiB
    /// (measured: 72 PUTs for 8 MiB written, 9 with the filter). The filter
    /// gathers the writes to an object and sends it once, at the next flush;
    /// the kernel flushes at every journal commit and fsync, and `close`
    /// flushes before it lets go, so nothing acknowledged to the filesystem
    /// as durable is only in the cache.
    public static func command(
        location: S3Location, metadata: S3ImageMetadata, files: Files, readOnly: Bool
    ) throws(ImgBackupError) -> [String] {
        let nbdkit: String
        do {
            nbdkit = try ExecutableLocator.locate("nbdkit")
        } catch {
            throw ImgBackupError(.system, "the s3 transport needs nbdkit: \(error)", hint: "apt-get install nbdkit")
        }
        return [nbdkit, "--single", "--exit-with-parent", "--filter=cache"] + (readOnly ? ["--readonly"] : []) + [
            "python", files.wrapper, "endpoint-url=\(location.endpoint)", "bucket=\(location.bucket)",
            "key=\(location.prefix)", "size=\(metadata.size)", "object-size=\(metadata.objectSize)",
            "cache=writeback", "cache-min-block-size=\(metadata.objectSize)",
            "cache-max-size=\(cacheLimit(objectSize: metadata.objectSize))",
        ]
    }
}
