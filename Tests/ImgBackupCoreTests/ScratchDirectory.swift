import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A fresh directory on a disk filesystem (/var/tmp, not tmpfs: rsync and
/// borg see real inodes), named `imgbackup-NAME.XXXXXX`. The test removes it.
func makeScratchDirectory(_ name: String) -> String {
    var template = Array("/var/tmp/imgbackup-\(name).XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}
