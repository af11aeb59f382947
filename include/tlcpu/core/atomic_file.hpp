// tlcpu: writing a file so that a crash at any moment leaves either the old file or the
// new one, never a torn one: write to "<path>.tmp-<pid>", flush, fsync, rename over path,
// fsync the directory. Checkpoints, weights and reports all go through here.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

#include "tlcpu/core/error.hpp"

namespace tlcpu {

// write(FILE*) returns false on a short write. Failures are an Error naming the path and
// errno's reason; the temporary file is removed and path is left as it was.
template <class Write>
void write_atomically(const std::string& path, Write&& write) {
    const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
    struct Guard {
        const std::string& tmp;
        FILE* f = nullptr;
        bool renamed = false;
        ~Guard() {
            if (f) std::fclose(f);
            if (!renamed) std::remove(tmp.c_str());
        }
    } g{tmp};
    auto io_fail = [&](const std::string& what) {
        const int err = errno;
        fail(path + ": " + what + ": " + (err ? std::strerror(err) : "short write"));
    };
    errno = 0;
    g.f = std::fopen(tmp.c_str(), "wb");
    if (!g.f) io_fail("cannot create temporary file '" + tmp + "'");
    if (!write(g.f) || std::fflush(g.f) != 0) io_fail("cannot write '" + tmp + "'");
    if (::fsync(::fileno(g.f)) != 0) io_fail("cannot fsync '" + tmp + "'");
    FILE* f = std::exchange(g.f, nullptr);
    if (std::fclose(f) != 0) io_fail("cannot close '" + tmp + "'");
    if (std::rename(tmp.c_str(), path.c_str()) != 0) io_fail("cannot rename '" + tmp + "' over it");
    g.renamed = true;

    // The rename itself is durable only once the directory is synced.
    std::string dir = std::filesystem::path(path).parent_path().string();
    if (dir.empty()) dir = ".";
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) io_fail("cannot open directory '" + dir + "' to fsync it");
    const int rc = ::fsync(fd), err = errno;
    ::close(fd);
    // EINVAL: the filesystem cannot sync directories at all; the file data itself is already synced.
    if (rc != 0 && err != EINVAL) {
        errno = err;
        io_fail("cannot fsync directory '" + dir + "'");
    }
}

}  // namespace tlcpu
