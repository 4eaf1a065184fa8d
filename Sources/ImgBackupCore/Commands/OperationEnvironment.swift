import ImgBackupOS
import Logging

/// A line of progress for a slow step; the CLI shows it on a terminal.
public protocol ProgressDisplay: Sendable {
    func update(_ line: String)
    func finish()
}

/// What every operation needs from the outside world.
public struct OperationEnvironment: Sendable {
    public var paths: RuntimePaths
    public var runner: any CommandRunning
    public var logger: Logger
    public var progress: (any ProgressDisplay)?
    /// The config file, for helpers started from this one (the NBD bridge).
    public var configPath: String
    /// This process's environment, of which a key command sees the few
    /// variables it needs to find its agent (``KeyLoader``).
    public var processEnvironment: [String: String] = [:]
    /// Where `run` writes its Prometheus textfile metrics; nil: nowhere.
    public var metricsDirectory: String?
    /// The stop signals this process received; tests give their own.
    public var stopSignals: StopSignals = .shared
    /// How often a long run, init or trim logs its progress when no
    /// terminal shows it (``JournalProgress``); nil: never.
    public var journalProgressInterval: Duration? = .seconds(60)
    /// Takes layers down (``SystemTeardown``); host tests give a fake that
    /// records each step.
    var layerTeardown: @Sendable (TeardownContext) -> any LayerTeardown = { SystemTeardown(context: $0) }
    /// The transports a guarded step asks whether they answer
    /// (``TransportProbe``); host tests give probes that answer as told.
    var transportProbes: @Sendable (Target, [SourceHost], RuntimePaths) -> [any TransportProbing] = {
        TransportProbe.all(target: $0, sources: $1, paths: $2)
    }

    public init(
        paths: RuntimePaths, runner: any CommandRunning = SubprocessCommandRunner(), logger: Logger,
        progress: (any ProgressDisplay)? = nil, configPath: String = ConfigLoader.defaultPath
    ) {
        self.configPath = configPath
        self.paths = paths
        self.runner = runner
        self.logger = logger
        self.progress = progress
    }

    var stateStore: StateStore { StateStore(paths: paths) }
}

extension OperationEnvironment {
    /// The target's key, from wherever the config or command line says.
    func key(for target: Target) async throws(ImgBackupError) -> SecureBytes {
        try await KeyLoader.load(target.key, target: target.name, runner: runner, environment: processEnvironment)
    }
}
