import ImgBackupOS
import Logging

/// `imgbackup key add` / `key remove`: the keyslots of the target's LUKS
/// header. Works on the open target's loop device, or brings up the
/// transport and a loop device just for the change. The keys go from memory
/// to libcryptsetup, like every key.
public struct KeyOperation {
    public let target: Target
    public let environment: OperationEnvironment

    public enum Change: Sendable {
        /// A keyslot for this key, unlocked by the target's key.
        case add(SecureBytes)
        /// Wipe the keyslot the target's key opens; never the last one.
        case remove
    }

    public struct Report: Sendable {
        /// The keyslot added or wiped.
        public let slot: Int
        /// Keyslots holding a key afterwards.
        public let keysLeft: Int
    }

    public init(target: Target, environment: OperationEnvironment) {
        self.target = target
        self.environment = environment
    }

    public func run(_ change: Change) async throws(ImgBackupError) -> Report {
        let key = try await environment.key(for: target)
        let lock = try TargetLock.acquire(target, paths: environment.paths)
        defer { withExtendedLifetime(lock) {} }
        let deadline = Deadlines(target).keyslotChange

        if let record = try environment.stateStore.load(target: target.name) {
            // Open: its loop device carries the header.
            for case .loop(_, let device?) in record.layers {
                return try await apply(change, key: key, device: device, deadline: deadline)
            }
            throw ImgBackupError(
                .invalidState, "target '\(target.name)' is partly open: no loop device in its state record",
                hint: "run 'imgbackup close \(target.name)' first")
        }
        let builder = StackBuilder(target: target, environment: environment, operation: .key)
        return try await builder.unwindingOnFailure { () throws(ImgBackupError) -> Report in
            let image = try await builder.pushTransport()
            let loop = LoopLayer(backingFile: image, deadline: builder.deadlines.remoteCall)
            try await builder.push(loop)
            defer { loop.release() }
            guard let device = loop.attachedDevice?.path else {
                throw ImgBackupError(.system, "failed to attach a loop device to \(image)")
            }
            let report = try await apply(change, key: key, device: device, deadline: deadline)
            loop.release()
            try await builder.unwind()
            return report
        }
    }

    private func apply(_ change: Change, key: SecureBytes, device: String, deadline: Duration)
        async throws(ImgBackupError) -> Report
    {
        let (name, expected, pbkdf) = (
            target.name, LUKSIdentity(paths: environment.paths).expectation(for: target.name), target.pbkdf
        )
        do {
            return try await withAbandonableDeadline(deadline, operation: "change the keyslots of \(device)") {
                () throws -> Report in
                // A key added to a header the remote forged would open the forger's volume key.
                _ = try CheckedHeader.read(device: device, expected: expected)
                let crypt = try CryptDevice(devicePath: device)
                try crypt.load()
                let slot: Int
                do {
                    slot = try crypt.activate(name: nil, key: key)
                } catch let error as CryptSetupError where error.isWrongKey {
                    throw ImgBackupError(
                        .badKey, "the key given for '\(name)' does not open any keyslot",
                        hint: "check key_file, key_command, --key-file or --key-fd")
                }
                switch change {
                case .add(let newKey):
                    if let existing = try? crypt.activate(name: nil, key: newKey) {
                        throw ImgBackupError(
                            .refused, "refusing to add the new key to '\(name)': it already opens keyslot \(existing)")
                    }
                    let added = try crypt.addKeyslot(existingKey: key, newKey: newKey, pbkdf: pbkdf)
                    return Report(slot: added, keysLeft: crypt.activeKeyslots.count)
                case .remove:
                    let active = crypt.activeKeyslots
                    guard active.count > 1 else {
                        throw ImgBackupError(
                            .refused,
                            "refusing to remove the last key of '\(name)': nothing could open the image again",
                            hint: "add another key first: imgbackup key add \(name) --new-key-file FILE")
                    }
                    try crypt.destroyKeyslot(slot)
                    return Report(slot: slot, keysLeft: active.count - 1)
                }
            }
        } catch {
            throw ImgBackupError.wrapping(error, .luks, failedTo: "change the keys of '\(name)'")
        }
    }
}
