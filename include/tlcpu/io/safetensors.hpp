// tlcpu: reading and writing safetensors files.
//
// A file is an 8-byte little-endian header length N, N bytes of JSON, then the data region; each
// header entry locates one tensor by byte offsets relative to the start of that region. open()
// reads the whole file once and checks every entry up front, so a corrupt or truncated file fails
// there with a message naming the file, the tensor and the fault, never later as garbage weights.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "tlcpu/core/atomic_file.hpp"
#include "tlcpu/core/error.hpp"
#include "tlcpu/core/tensor.hpp"

namespace tlcpu::io {

// Tensor bytes are copied straight out of the file, which is little-endian by definition.
static_assert(std::endian::native == std::endian::little, "tlcpu::io assumes a little-endian host");

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

namespace detail {
struct DTypeDesc { DType type; const char* name; uint64_t size; };
inline constexpr DTypeDesc kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1},
};
inline std::string offsets_str(uint64_t b, uint64_t e) {
    return "data_offsets [" + std::to_string(b) + "," + std::to_string(e) + "]";
}
inline const DTypeDesc& desc(DType t) {
    for (const auto& d : kDTypes) if (d.type == t) return d;
    fail("invalid DType value " + std::to_string(int(t)));
}
}  // namespace detail

inline const char* dtype_name(DType t) { return detail::desc(t).name; }
inline uint64_t dtype_size(DType t) { return detail::desc(t).size; }
inline std::optional<DType> parse_dtype(std::string_view s) {
    for (const auto& d : detail::kDTypes) if (s == d.name) return d.type;
    return std::nullopt;
}

// IEEE binary16 -> float. Every half value is exactly representable as a float, so this is exact;
// subnormals are mant * 2^-24, and nan keeps its payload (shifted into the float's mantissa).
inline float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    if (exp == 0) {
        const float v = std::ldexp(float(mant), -24);
        return sign ? -v : v;
    }
    if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
    return std::bit_cast<float>(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}
// bfloat16 is the top half of a float, so widening is a shift.
inline float bf16_to_float(uint16_t b) { return std::bit_cast<float>(uint32_t(b) << 16); }

struct TensorInfo {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;  // byte offsets into the data region, end exclusive
};

namespace detail {
// The checksum tlcpu writes into the metadata of every file it saves and checks on load,
// so a damaged checkpoint is an error, not weights that are silently wrong. FNV-1a over
// 64-bit words of each tensor's name, shape and offsets (sorted by name) and the data.
inline constexpr const char* checksum_key = "tlcpu.checksum";
struct Fnv {
    uint64_t h = 0xcbf29ce484222325ull;
    void word(uint64_t v) { h = (h ^ v) * 0x100000001b3ull; }
    void bytes(const char* p, size_t n) {
        size_t i = 0;
        for (uint64_t v; i + 8 <= n; i += 8) std::memcpy(&v, p + i, 8), word(v);
        uint64_t tail = 0;
        std::memcpy(&tail, p + i, n - i);
        word(tail ^ (uint64_t(n - i) << 56));
    }
};
struct Entry {
    const std::string* name;
    const Shape* shape;
    uint64_t begin, end;
    const char* data;  // end - begin bytes
};
inline std::string checksum(std::vector<Entry> entries) {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return *a.name < *b.name; });
    Fnv f;
    for (const Entry& e : entries) {
        f.bytes(e.name->data(), e.name->size());
        for (int64_t d : *e.shape) f.word(uint64_t(d));
        f.word(e.begin), f.word(e.end);
        f.bytes(e.data, e.end - e.begin);
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(f.h));
    return hex;
}
}  // namespace detail

class SafeTensors {
public:
    static SafeTensors open(const std::string& path);
    static SafeTensors parse(std::vector<char> bytes, std::string path_for_messages);

    const std::string& path() const { return path_; }
    size_t size() const { return infos_.size(); }
    std::vector<std::string> names() const {
        std::vector<std::string> r;
        for (const auto& i : infos_) r.push_back(i.name);
        return r;
    }
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    const TensorInfo& info(const std::string& name) const {
        auto it = index_.find(name);
        if (it == index_.end())
            bad(name, "no such tensor in the file (it has " + std::to_string(infos_.size()) + ")");
        return infos_[it->second];
    }
    Tensor get(const std::string& name) const;
    const std::map<std::string, std::string>& metadata() const { return meta_; }
    std::string meta(const std::string& key, const std::string& fallback = "") const {
        auto it = meta_.find(key);
        return it == meta_.end() ? fallback : it->second;
    }

private:
    using json = nlohmann::ordered_json;
    [[noreturn]] void bad(const std::string& what) const { fail(path_ + ": " + what); }
    [[noreturn]] void bad(const std::string& tensor, const std::string& what) const {
        fail(path_ + ": tensor '" + tensor + "': " + what);
    }
    TensorInfo check_entry(const std::string& name, const json& e, uint64_t data_size) const;

    std::string path_;
    std::shared_ptr<const std::vector<char>> bytes_;  // shared: copying a loaded file stays cheap
    uint64_t data_start_ = 0;
    std::vector<TensorInfo> infos_;  // header order
    std::unordered_map<std::string, size_t> index_;
    std::map<std::string, std::string> meta_;
};

inline SafeTensors SafeTensors::open(const std::string& path) {
    struct Close { void operator()(FILE* f) const { std::fclose(f); } };
    std::unique_ptr<FILE, Close> f(std::fopen(path.c_str(), "rb"));
    if (!f) fail(path + ": cannot open: " + std::strerror(errno));
    std::vector<char> bytes;
    std::error_code ec;
    if (auto n = std::filesystem::file_size(path, ec); !ec) bytes.reserve(n);
    // Read to EOF rather than trust the size: the file may be replaced (atomically) meanwhile.
    char buf[1 << 16];
    while (size_t n = std::fread(buf, 1, sizeof buf, f.get())) bytes.insert(bytes.end(), buf, buf + n);
    if (std::ferror(f.get())) fail(path + ": cannot read: " + std::strerror(errno));
    return parse(std::move(bytes), path);
}

inline SafeTensors SafeTensors::parse(std::vector<char> bytes, std::string path_for_messages) {
    SafeTensors st;
    st.path_ = std::move(path_for_messages);
    const uint64_t size = bytes.size();
    if (size < 8) st.bad("file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
    uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    if (n > size - 8)
        st.bad("header length " + std::to_string(n) + " reaches beyond the end of the file (" +
               std::to_string(size) + " bytes)");
    st.data_start_ = 8 + n;
    const uint64_t data_size = size - 8 - n;

    // nlohmann silently keeps the last of duplicate keys; two tensors under one name is corruption.
    std::unordered_set<std::string> seen;
    std::string dup;
    json::parser_callback_t on_key = [&](int depth, json::parse_event_t ev, json& parsed) {
        if (ev == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second)
            dup = parsed.get<std::string>();
        return true;
    };
    json h;
    try {
        h = json::parse(bytes.data() + 8, bytes.data() + 8 + n, on_key);
    } catch (const nlohmann::json::exception& e) {
        st.bad(std::string("malformed JSON header: ") + e.what());
    }
    if (!dup.empty()) st.bad(dup, "duplicate key in the header");
    if (!h.is_object()) st.bad(std::string("header is not a JSON object but ") + h.type_name());

    for (auto it = h.begin(); it != h.end(); ++it) {
        const json& e = it.value();
        if (it.key() != "__metadata__") {
            st.infos_.push_back(st.check_entry(it.key(), e, data_size));
            continue;
        }
        if (!e.is_object()) st.bad(std::string("__metadata__ is not an object of strings but ") + e.type_name());
        for (auto m = e.begin(); m != e.end(); ++m) {
            if (!m.value().is_string())
                st.bad("__metadata__ entry '" + m.key() + "' is not a string but " + m.value().type_name());
            st.meta_[m.key()] = m.value().get<std::string>();
        }
    }

    // Sorted by begin, any overlap shows up between neighbours.
    std::vector<const TensorInfo*> by_begin;
    for (const auto& i : st.infos_) if (i.begin != i.end) by_begin.push_back(&i);
    std::sort(by_begin.begin(), by_begin.end(), [](auto a, auto b) { return a->begin < b->begin; });
    for (size_t k = 1; k < by_begin.size(); ++k) {
        const TensorInfo &a = *by_begin[k - 1], &b = *by_begin[k];
        if (b.begin < a.end)
            st.bad(b.name, detail::offsets_str(b.begin, b.end) + " overlap tensor '" + a.name + "' (" +
                               detail::offsets_str(a.begin, a.end) + ")");
    }
    for (size_t k = 0; k < st.infos_.size(); ++k) st.index_.emplace(st.infos_[k].name, k);
    if (auto c = st.meta_.find(detail::checksum_key); c != st.meta_.end()) {
        std::vector<detail::Entry> entries;
        for (const auto& i : st.infos_)
            entries.push_back({&i.name, &i.shape, i.begin, i.end, bytes.data() + st.data_start_ + i.begin});
        if (const std::string got = detail::checksum(entries); got != c->second)
            st.bad("damaged: checksum " + got + " differs from the " + c->second +
                   " written with the file (a torn copy, a bad disk, or an edit)");
    }
    st.bytes_ = std::make_shared<const std::vector<char>>(std::move(bytes));
    return st;
}

inline TensorInfo SafeTensors::check_entry(const std::string& name, const json& e, uint64_t data_size) const {
    if (!e.is_object()) bad(name, std::string("header entry is not an object but ") + e.type_name());
    for (const char* k : {"dtype", "shape", "data_offsets"})
        if (!e.contains(k)) bad(name, std::string("header entry is missing \"") + k + "\"");
    TensorInfo ti{name, DType::F32, {}, 0, 0};

    const json& jd = e.at("dtype");
    if (!jd.is_string()) bad(name, "dtype " + jd.dump() + " is not a string");
    const auto dt = parse_dtype(jd.get_ref<const std::string&>());
    if (!dt) bad(name, "unknown dtype '" + jd.get<std::string>() + "'");
    ti.dtype = *dt;
    const uint64_t esize = dtype_size(ti.dtype);

    // Partial products are bounded in the order tlcpu::numel() multiplies, so it cannot overflow
    // either, and the byte count (count * 8 at most) still fits an int64.
    const json& js = e.at("shape");
    if (!js.is_array()) bad(name, "shape " + js.dump() + " is not an array");
    uint64_t count = 1;
    constexpr uint64_t limit = uint64_t(INT64_MAX) / 8;
    for (const json& d : js) {
        if (!d.is_number_unsigned()) bad(name, "shape " + js.dump() + " is not an array of non-negative integers");
        const uint64_t v = d.get<uint64_t>();
        if (v > limit || (v && count > limit / v)) bad(name, "shape " + js.dump() + ": element count overflows");
        count *= v;
        ti.shape.push_back(int64_t(v));
    }

    const json& jo = e.at("data_offsets");
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
        bad(name, "data_offsets " + jo.dump() + " is not two non-negative integers");
    ti.begin = jo[0].get<uint64_t>();
    ti.end = jo[1].get<uint64_t>();
    const std::string range = detail::offsets_str(ti.begin, ti.end);
    if (ti.begin > ti.end) bad(name, range + ": begin > end");
    if (ti.end > data_size)
        bad(name, range + " end beyond the data region (" + std::to_string(data_size) + " bytes)");
    if (count * esize != ti.end - ti.begin)
        bad(name, "size mismatch: shape " + to_string(ti.shape) + " of " + dtype_name(ti.dtype) + " needs " +
                      std::to_string(count * esize) + " bytes but " + range + " span " +
                      std::to_string(ti.end - ti.begin));
    return ti;
}


namespace detail {
// Unaligned-safe: the data region starts wherever the header ends, so memcpy each element.
template <class T, class F>
void widen(const char* src, float* dst, int64_t n, F f) {
    for (int64_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, src + i * int64_t(sizeof(T)), sizeof(T));
        dst[i] = f(v);
    }
}
template <class T>
void widen(const char* src, float* dst, int64_t n) {
    widen<T>(src, dst, n, [](T v) { return float(v); });
}
}  // namespace detail

inline Tensor SafeTensors::get(const std::string& name) const {
    const TensorInfo& ti = info(name);
    Tensor t(ti.shape);
    const char* src = bytes_->data() + data_start_ + ti.begin;
    float* dst = t.data();
    const int64_t n = t.size();
    switch (ti.dtype) {
        case DType::F32: if (n) std::memcpy(dst, src, size_t(n) * 4); break;
        case DType::F64: detail::widen<double>(src, dst, n); break;
        case DType::F16: detail::widen<uint16_t>(src, dst, n, half_to_float); break;
        case DType::BF16: detail::widen<uint16_t>(src, dst, n, bf16_to_float); break;
        case DType::I64: detail::widen<int64_t>(src, dst, n); break;
        case DType::I32: detail::widen<int32_t>(src, dst, n); break;
        case DType::I16: detail::widen<int16_t>(src, dst, n); break;
        case DType::I8: detail::widen<int8_t>(src, dst, n); break;
        case DType::U8: detail::widen<uint8_t>(src, dst, n); break;
        case DType::BOOL: detail::widen<uint8_t>(src, dst, n, [](uint8_t v) { return v ? 1.f : 0.f; }); break;
    }
    return t;
}

// Writes to "<path>.tmp-<pid>", syncs it, renames it over path and syncs the directory: rename is
// atomic, so a crash at any moment leaves the old file or the new one, never a torn one.
inline void save_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, const Tensor*>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    using json = nlohmann::ordered_json;
    json h = json::object();
    check(!metadata.count(detail::checksum_key), path + ": metadata key '" + detail::checksum_key + "' is reserved");
    h["__metadata__"] = metadata;
    uint64_t off = 0;
    std::vector<detail::Entry> entries;
    for (const auto& entry : tensors) {
        const std::string& name = entry.first;  // not a structured binding: lambdas must capture it
        const Tensor* t = entry.second;
        auto bad = [&](const std::string& what) { fail(path + ": tensor '" + name + "': " + what); };
        if (!t) bad("null tensor pointer");
        if (name == "__metadata__") bad("the name is reserved for metadata");
        if (h.contains(name)) bad("duplicate tensor name");
        if (t->size() != numel(t->shape())) bad("has no storage (default-constructed?)");
        h[name] = {{"dtype", "F32"}, {"shape", t->shape()}, {"data_offsets", {off, off + t->bytes()}}};
        entries.push_back({&entry.first, &t->shape(), off, off + t->bytes(), reinterpret_cast<const char*>(t->data())});
        off += t->bytes();
    }
    h["__metadata__"][detail::checksum_key] = detail::checksum(entries);
    std::string header;
    try {
        header = h.dump();
    } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a name or metadata
        fail(path + ": cannot encode the header: " + e.what());
    }
    // Padding keeps the data region 8-byte aligned, so readers can map tensors without copying.
    header.append((8 - header.size() % 8) % 8, ' ');

    write_atomically(path, [&](FILE* f) {
        const uint64_t n = header.size();
        bool ok = std::fwrite(&n, 8, 1, f) == 1 && std::fwrite(header.data(), 1, n, f) == n;
        for (const auto& [name, t] : tensors)
            ok = ok && (t->bytes() == 0 || std::fwrite(t->data(), 1, t->bytes(), f) == t->bytes());
        return ok;
    });
}

}  // namespace tlcpu::io
