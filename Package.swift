// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "imgbackup",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "imgbackup", targets: ["imgbackup"]),
        .library(name: "ImgBackupCore", targets: ["ImgBackupCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // Thin CLI: argument parsing and printing only.
        .executableTarget(
            name: "imgbackup",
            dependencies: [
                "ImgBackupCore", "ImgBackupNBDBridge",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            plugins: ["BuildInfo"]
        ),
        // The git commit the binary is built from, for --version.
        .plugin(name: "BuildInfo", capability: .buildTool()),
        // Config, the layers and their stack, per-target state, the watchdog, the commands.
        .target(
            name: "ImgBackupCore",
            dependencies: [
                "ImgBackupOS",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]
        ),
        // The `nbd-bridge` process: a libnbd client serving the export as a
        // one-file FUSE filesystem. The only user of libnbd and libfuse3.
        .target(
            name: "ImgBackupNBDBridge",
            dependencies: [
                "ImgBackupCore", "ImgBackupOS", "CNBD", "CFuse3", "CImgBackupShim",
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // Every C handle and syscall: mounts, loop devices, libcryptsetup, processes.
        .target(
            name: "ImgBackupOS",
            dependencies: [
                "CCryptsetup", "CImgBackupShim",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ]
        ),
        .systemLibrary(
            name: "CCryptsetup", pkgConfig: "libcryptsetup",
            providers: [.apt(["libcryptsetup-dev"])]),
        .systemLibrary(
            name: "CNBD", pkgConfig: "libnbd",
            providers: [.apt(["libnbd-dev"])]),
        .systemLibrary(
            name: "CFuse3", pkgConfig: "fuse3",
            providers: [.apt(["libfuse3-dev"])]),
        // Kernel UAPI bits Swift cannot import or call directly (ioctl is variadic).
        .target(name: "CImgBackupShim"),
        .testTarget(name: "ImgBackupCoreTests", dependencies: ["ImgBackupCore"]),
        .testTarget(name: "ImgBackupOSTests", dependencies: ["ImgBackupOS"]),
        .testTarget(
            name: "ImgBackupNBDBridgeTests", dependencies: ["ImgBackupNBDBridge", "ImgBackupCore", "ImgBackupOS"]),
    ],
    swiftLanguageModes: [.v6]
)
