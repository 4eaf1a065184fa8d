import ImgBackupOS

extension Target {
    /// Every layer this target can have, bottom first: what `close` takes
    /// down when there is no state record, what `status` looks for beside
    /// the record, and what `doctor` reports as left over. The one list:
    /// a new layer kind goes here and in LayerRecord.
    func possibleLayers(_ paths: RuntimePaths) -> [LayerRecord] {
        let remote = paths.remoteMount(name)
        let bridge = paths.nbdMount(name)
        return [
            .sshfs(source: self.remote.sshfsSource, mountPoint: remote),
            .nbdBridge(mountPoint: bridge, pid: nil),
            .loop(backingFile: "\(remote)/\(image)", device: nil),
            .loop(backingFile: NBDBridgeLayer.imageFile(mountPoint: bridge), device: nil),
            .crypt(name: mappingName),
            .filesystem(device: "/dev/mapper/\(mappingName)", mountPoint: mountPoint),
        ]
            + (copy?.sourceHosts ?? []).map { host in
                .sshfs(source: host.location.sshfsSource, mountPoint: paths.sourceMount(name, host))
            }
    }

    /// The layers of this target that are up now although `recorded` does
    /// not list them (a state record lost, or one that lost track).
    func layersUp(besides recorded: [LayerRecord], _ paths: RuntimePaths) -> [LayerRecord] {
        possibleLayers(paths).filter { layer in
            !recorded.contains { $0.isSameLayer(as: layer) } && layer.isUp == true
        }
    }
}
