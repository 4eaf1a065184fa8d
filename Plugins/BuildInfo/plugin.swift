import Foundation
import PackagePlugin

/// Writes the git commit the binary is built from into the executable's
/// sources (`BuildInfo.commit`), for `imgbackup --version`. A prebuild
/// command runs before every build; the file is rewritten only when the
/// commit changes, so an unchanged tree recompiles nothing. Outside a git
/// checkout (a source tarball) the commit is "unknown".
@main
struct BuildInfo: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let directory = context.pluginWorkDirectoryURL.appending(path: "generated")
        let script = """
            set -eu
            commit=$(git -C "$1" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
            if [ "$commit" != unknown ] && ! git -C "$1" diff --quiet HEAD -- Sources Package.swift 2>/dev/null; then
              commit="$commit-modified"
            fi
            mkdir -p "$2"
            text="enum BuildInfo { static let commit = \\"$commit\\" }"
            if [ "$(cat "$2/BuildInfo.swift" 2>/dev/null)" != "$text" ]; then
              printf '%s\\n' "$text" > "$2/BuildInfo.swift"
            fi
            """
        return [
            .prebuildCommand(
                displayName: "Recording the git commit for --version",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", script, "sh", context.package.directoryURL.path, directory.path],
                outputFilesDirectory: directory)
        ]
    }
}
