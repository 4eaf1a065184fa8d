import CImgBackupShim

public enum ExtendedAttribute {
    /// A short text attribute of `path`, nil when absent or unreadable.
    public static func value(of path: String, name: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 256)
        let length = buffer.withUnsafeMutableBytes { getxattr(path, name, $0.baseAddress, $0.count) }
        guard length > 0 else { return nil }
        return String(decoding: buffer[0..<length], as: UTF8.self)
    }
}
