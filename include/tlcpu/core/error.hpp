// tlcpu: one exception type, so callers can tell our diagnostics from the standard library's.
#pragma once
#include <stdexcept>
#include <string>

namespace tlcpu {

// Every message names the file, tensor or layer at fault and what is wrong with it.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

[[noreturn]] inline void fail(const std::string& msg) { throw Error("tlcpu: " + msg); }

inline void check(bool ok, const std::string& msg) {
    if (!ok) fail(msg);
}

}  // namespace tlcpu
