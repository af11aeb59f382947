// tlcpu: a class-per-folder image data set (Keras' flow_from_directory layout), decoded
// once into memory at the training size, validation splits (our stratified hash split
// and Keras' first-fraction rule), split files, and duplicate exclusion lists.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "tlcpu/core/atomic_file.hpp"
#include "tlcpu/core/error.hpp"
#include "tlcpu/core/random.hpp"
#include "tlcpu/io/image.hpp"

namespace tlcpu::data {

struct FileEntry {
    std::string path;  // as found on disk: root / class / file
    int label = 0;
};

// "meningioma/Tr-me_0281.jpg": the last two components, which is how duplicate lists and
// the stratified split name a file whatever the data root is.
inline std::string class_file_key(const std::string& path) {
    const std::filesystem::path p = std::filesystem::path(path).lexically_normal();
    const std::filesystem::path cls = p.parent_path().filename();
    return cls.empty() ? p.filename().generic_string() : (cls / p.filename()).generic_string();
}

namespace detail {

// Non-hidden entries of a folder, sorted by name (byte order, as Python's sorted()), as
// (name, is_directory); regular files and symlinks to them count as files, anything else
// (sockets, broken links) is left out. error_code overloads, so failures are our Error.
inline std::vector<std::pair<std::string, bool>> list_dir(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    std::vector<std::pair<std::string, bool>> out;
    std::error_code ec;
    fs::directory_iterator it(dir, ec), end;
    if (ec) fail(dir.string() + ": cannot list the folder (" + ec.message() + ")");
    for (; it != end; it.increment(ec)) {
        if (ec) fail(dir.string() + ": cannot list the folder (" + ec.message() + ")");
        const std::string name = it->path().filename().string();
        if (name.empty() || name[0] == '.') continue;
        std::error_code e2;
        if (it->is_directory(e2)) out.emplace_back(name, true);
        else if (it->is_regular_file(e2)) out.emplace_back(name, false);
    }
    std::sort(out.begin(), out.end());
    return out;
}

}  // namespace detail

struct ImageFolder {
    std::filesystem::path root;
    std::vector<std::string> classes;
    std::vector<FileEntry> files;  // class by class, each sorted by name

    // Class folders sorted by name are labels 0..k-1 (Keras' flow_from_directory order).
    // Every non-hidden file of a class folder is listed whatever its extension (the decoder
    // judges content); files directly under root and folders inside class folders are ignored.
    static ImageFolder scan(const std::filesystem::path& root) {
        namespace fs = std::filesystem;
        std::error_code ec;
        const fs::file_status st = fs::status(root, ec);
        if (!fs::exists(st)) fail(root.string() + ": no such folder");
        if (!fs::is_directory(st)) fail(root.string() + ": not a directory");
        ImageFolder f;
        f.root = root;
        for (const auto& [name, is_dir] : detail::list_dir(root))
            if (is_dir) f.classes.push_back(name);
        if (f.classes.empty())
            fail(root.string() + ": no class subfolders (expected one folder per class, e.g. " +
                 (root / "<class>" / "<image>").string() + ")");
        for (size_t c = 0; c < f.classes.size(); ++c) {
            const fs::path dir = root / f.classes[c];
            size_t before = f.files.size();
            for (const auto& [name, is_dir] : detail::list_dir(dir))
                if (!is_dir) f.files.push_back({(dir / name).string(), int(c)});
            if (f.files.size() == before) fail(dir.string() + ": class folder has no files");
        }
        return f;
    }
};

enum class Resize { antialias, nearest };  // antialias: stb_image_resize; nearest: Keras' default (PIL NEAREST)

// What decode_folder does when the decoded images would exceed DecodeOptions::max_bytes.
enum class OverCap {
    refuse,  // an Error with the numbers, before any decoding
    stream,  // keep going: check every file once, keep no pixels, decode again on every read
};

struct DecodeOptions {
    int size = 224;
    Resize resize = Resize::antialias;
    bool strict = false;                // an unreadable file is an Error instead of a warning
    std::set<std::string> exclude{};    // files to skip unread, matched by class_file_key(): see read_exclude_list
    std::FILE* warnings = stderr;       // one line per skipped file, and the streaming notice; nullptr: silent
    // Cap on the decoded images' memory, so a folder that would not fit does not swap or get
    // killed hours later; over_cap says what happens then. 0: no cap.
    uint64_t max_bytes = 0;
    OverCap over_cap = OverCap::refuse;
};

// One file decoded and resized to size x size RGB at dst, exactly as every image of a
// DecodedSet is made, cached or streamed. Returns "" or why the file is unusable; never throws.
inline std::string try_decode_resized(const std::string& path, int size, Resize resize, uint8_t* dst) {
    try {
        Image im;
        if (std::string why = try_decode_image(path, im); !why.empty()) return why;
        if (resize == Resize::nearest) resize_nearest_into(im, size, size, dst);
        else resize_into(im, size, size, dst);
        return "";
    } catch (const std::exception& e) {  // nothing may leave an OpenMP region
        return e.what();
    }
}

struct DecodedSet {
    int size = 0;
    Resize resize = Resize::antialias;
    std::vector<std::string> classes;
    std::vector<FileEntry> files;       // the decoded ones, in folder order
    std::vector<uint8_t> pixels;        // files.size() x size x size x 3, RGB; empty when streamed
    // Over DecodeOptions::max_bytes with OverCap::stream: no pixels are kept, read_image()
    // decodes the file again each time (the same bytes as a cached set would hold).
    bool streamed = false;
    std::vector<std::pair<std::string, std::string>> skipped;  // (path, reason), unreadable
    int excluded = 0;                   // files matched by DecodeOptions::exclude

    size_t image_bytes() const { return size_t(size) * size_t(size) * 3; }
    // Cached sets only: a pointer into pixels.
    const uint8_t* image(size_t i) const {
        if (streamed) fail(files.at(i).path + ": a streamed DecodedSet keeps no pixels; use read_image()");
        return pixels.data() + i * image_bytes();
    }
    // Image i (size x size x 3) into dst, from memory or, streamed, from its file. A file that
    // became unreadable since decode_folder checked it is an Error naming it.
    void read_image(size_t i, uint8_t* dst) const {
        if (!streamed) {
            std::memcpy(dst, image(i), image_bytes());
            return;
        }
        const std::string& path = files.at(i).path;
        if (std::string why = try_decode_resized(path, size, resize, dst); !why.empty())
            fail(path + ": " + why + " (it decoded when the folder was scanned)");
    }
    size_t bytes() const { return pixels.size(); }
};

// Decodes every file once, in parallel; each lands at its own index, so nothing depends on
// the thread count. Gray, gray+alpha and RGBA become RGB; the format comes from the bytes.
// Prints only the warnings for skipped files, after the parallel part, in folder order.
inline DecodedSet decode_folder(const ImageFolder& folder, const DecodeOptions& opt) {
    if (opt.size <= 0) fail("decode_folder: image size must be positive, got " + std::to_string(opt.size));
    DecodedSet out;
    out.size = opt.size;
    out.resize = opt.resize;
    out.classes = folder.classes;

    const size_t n_classes = folder.classes.size();
    std::vector<int64_t> listed(n_classes, 0), excluded(n_classes, 0), unreadable(n_classes, 0), decoded(n_classes, 0);
    std::set<std::string> exclude;  // as keys, so full paths work too
    for (const auto& e : opt.exclude) exclude.insert(class_file_key(e));
    std::vector<size_t> todo;
    todo.reserve(folder.files.size());
    for (size_t i = 0; i < folder.files.size(); ++i) {
        const size_t c = size_t(folder.files[i].label);
        if (c >= n_classes) fail(folder.files[i].path + ": label " + std::to_string(folder.files[i].label) +
                                 " is not one of the " + std::to_string(n_classes) + " classes");
        ++listed[c];
        if (exclude.empty() || !exclude.count(class_file_key(folder.files[i].path))) {
            todo.push_back(i);
        } else {
            ++excluded[c];
            ++out.excluded;
        }
    }
    const size_t px = out.image_bytes();
    const int64_t n = int64_t(todo.size());
    if (opt.max_bytes && px > opt.max_bytes)  // not even streaming can stay under the cap
        fail(folder.root.string() + ": one image at " + std::to_string(opt.size) + "x" + std::to_string(opt.size) +
             " needs " + std::to_string(px) + " bytes, over the cap of " + std::to_string(opt.max_bytes) + " bytes");
    // Compared by division: todo.size() * px can overflow for absurd sizes.
    if (opt.max_bytes && todo.size() > opt.max_bytes / px) {
        char msg[160];
        std::snprintf(msg, sizeof msg, "%lld images at %dx%d needs %.1f MB, over the cap of %.1f MB", static_cast<long long>(n),
                      opt.size, opt.size, double(todo.size()) * double(px) / (1 << 20), double(opt.max_bytes) / (1 << 20));
        if (opt.over_cap == OverCap::refuse)
            fail(folder.root.string() + ": decoding " + msg +
                 "; use fewer images (an exclusion list, a per-class limit), a smaller size, or a larger cap");
        out.streamed = true;
        if (opt.warnings)
            std::fprintf(opt.warnings,
                         "tlcpu: notice: %s: decoding %s; the images are checked now and decoded from disk again "
                         "at every read instead of kept in memory (slower, memory stays bounded)\n",
                         folder.root.string().c_str(), msg);
    }
    // Streamed, each thread decodes into its own scratch image, only to learn which files are readable.
    if (!out.streamed) out.pixels.resize(todo.size() * px);
    std::vector<std::string> why(todo.size());

#pragma omp parallel
    {
        std::vector<uint8_t> scratch(out.streamed ? px : 0);
#pragma omp for schedule(dynamic, 4)
        for (int64_t k = 0; k < n; ++k) {
            uint8_t* dst = out.streamed ? scratch.data() : out.pixels.data() + size_t(k) * px;
            why[size_t(k)] = try_decode_resized(folder.files[todo[size_t(k)]].path, opt.size, opt.resize, dst);
        }
    }

    size_t kept = 0;
    for (size_t k = 0; k < todo.size(); ++k) {
        const FileEntry& f = folder.files[todo[k]];
        if (!why[k].empty()) {
            out.skipped.emplace_back(f.path, why[k]);
            ++unreadable[size_t(f.label)];
            continue;
        }
        if (kept != k && !out.streamed) std::memmove(out.pixels.data() + kept * px, out.pixels.data() + k * px, px);
        out.files.push_back(f);
        ++decoded[size_t(f.label)];
        ++kept;
    }
    if (opt.strict && !out.skipped.empty()) {
        std::string more = out.skipped.size() > 1
                               ? " (and " + std::to_string(out.skipped.size() - 1) + " more unreadable files)"
                               : "";
        fail(out.skipped[0].first + ": " + out.skipped[0].second + more);
    }
    if (opt.warnings)
        for (const auto& [path, reason] : out.skipped)
            std::fprintf(opt.warnings, "tlcpu: warning: skipping %s: %s\n", path.c_str(), reason.c_str());
    // A class the caller gave no files of (evaluate on a split's subset) is theirs to judge.
    for (size_t c = 0; c < n_classes; ++c)
        if (decoded[c] == 0 && listed[c] > 0)
            fail((folder.root / folder.classes[c]).string() + ": no readable image in this class folder (" +
                 std::to_string(listed[c]) + " files: " + std::to_string(unreadable[c]) + " unreadable, " +
                 std::to_string(excluded[c]) + " excluded)");
    if (!out.streamed) {
        out.pixels.resize(kept * px);
        if (kept < todo.size()) out.pixels.shrink_to_fit();
    }
    return out;
}

struct Split {
    std::vector<int64_t> train, val;  // indices into the files, ascending
};

namespace detail {

inline std::vector<std::vector<int64_t>> by_class(const std::vector<FileEntry>& files, int n_classes,
                                                  double fraction, const char* who) {
    if (!(fraction >= 0 && fraction <= 1))
        fail(std::string(who) + ": the validation fraction must be in [0, 1], got " + std::to_string(fraction));
    std::vector<std::vector<int64_t>> idx(size_t(std::max(n_classes, 0)));
    for (size_t i = 0; i < files.size(); ++i) {
        const int l = files[i].label;
        if (l < 0 || l >= n_classes)
            fail(std::string(who) + ": " + files[i].path + " has label " + std::to_string(l) + ", outside 0.." +
                 std::to_string(n_classes - 1));
        idx[size_t(l)].push_back(int64_t(i));
    }
    return idx;
}

inline Split from_flags(const std::vector<char>& is_val) {
    Split s;
    for (size_t i = 0; i < is_val.size(); ++i) (is_val[i] ? s.val : s.train).push_back(int64_t(i));
    return s;
}

}  // namespace detail

// Stratified: in each class, round(fraction * n) files go to val, the ones with the smallest
// hash of (seed, "class/file"). A file's hash does not depend on the other files, so adding
// or removing files elsewhere (an exclusion list, a new class) leaves a class's order alone.
inline Split split_stratified(const std::vector<FileEntry>& files, int n_classes, double fraction, uint64_t seed) {
    std::vector<char> is_val(files.size(), 0);
    for (auto& members : detail::by_class(files, n_classes, fraction, "split_stratified")) {
        std::vector<std::pair<uint64_t, int64_t>> order;
        order.reserve(members.size());
        for (int64_t i : members)
            order.emplace_back(hash3(seed, 0x5B1D5EEDull, hash_name(class_file_key(files[size_t(i)].path))), i);
        std::sort(order.begin(), order.end());
        const size_t k = size_t(std::llround(fraction * double(members.size())));
        for (size_t j = 0; j < k; ++j) is_val[size_t(order[j].second)] = 1;
    }
    return detail::from_flags(is_val);
}

// Keras' ImageDataGenerator(validation_split=f): in each class, in the order given (folder
// order, i.e. sorted by name), the first int(f * n) files (truncated, as Python's int())
// are validation. Keras counts the listed files before decoding; here it is the files given.
inline Split split_keras(const std::vector<FileEntry>& files, int n_classes, double fraction) {
    std::vector<char> is_val(files.size(), 0);
    for (auto& members : detail::by_class(files, n_classes, fraction, "split_keras")) {
        const size_t k = size_t(int64_t(fraction * double(members.size())));
        for (size_t j = 0; j < k; ++j) is_val[size_t(members[j])] = 1;
    }
    return detail::from_flags(is_val);
}

namespace detail {

inline std::string relative_to(const std::string& path, const std::filesystem::path& root) {
    const std::string rel = std::filesystem::path(path).lexically_relative(root).generic_string();
    if (rel.empty() || rel.starts_with(".."))
        fail(path + ": not under the data root " + root.string());
    return rel;
}

inline std::vector<std::string> split_fields(const std::string& line, char sep) {
    std::vector<std::string> out;
    size_t at = 0;
    for (;;) {
        size_t next = line.find(sep, at);
        out.push_back(line.substr(at, next - at));
        if (next == std::string::npos) return out;
        at = next + 1;
    }
}

inline bool next_line(std::istream& in, std::string& line) {
    if (!std::getline(in, line)) return false;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
}

struct SplitRow {
    std::string file, cls;  // file relative to the data folder
    bool val;
};

// The split's files in the decoded set's order; path names the split file for errors.
inline std::vector<SplitRow> split_rows(const std::string& path, const DecodedSet& set, const Split& split,
                                        const std::filesystem::path& root) {
    std::vector<char> subset(set.files.size(), 0);
    for (int pass = 0; pass < 2; ++pass)
        for (int64_t i : pass ? split.val : split.train) {
            if (i < 0 || size_t(i) >= set.files.size())
                fail(path + ": split index " + std::to_string(i) + " is outside the " +
                     std::to_string(set.files.size()) + " decoded files");
            if (subset[size_t(i)]) fail(path + ": " + set.files[size_t(i)].path + " is in the split twice");
            subset[size_t(i)] = char(pass ? 'v' : 't');
        }
    std::vector<SplitRow> rows;
    for (size_t i = 0; i < set.files.size(); ++i)
        if (subset[i])
            rows.push_back({relative_to(set.files[i].path, root), set.classes.at(size_t(set.files[i].label)), subset[i] == 'v'});
    return rows;
}

}  // namespace detail

// "file<TAB>class<TAB>subset" with a header; file relative to root, subset train or val.
// path names the split file for errors.
inline std::string split_tsv_text(const std::string& path, const DecodedSet& set, const Split& split,
                                  const std::filesystem::path& root) {
    std::string text = "file\tclass\tsubset\n";
    for (const auto& r : detail::split_rows(path, set, split, root)) {
        if (r.file.find_first_of("\t\n\r") != std::string::npos)
            fail(r.file + ": a tab or newline in a file name cannot go in a TSV");
        text += r.file + '\t' + r.cls + '\t' + (r.val ? "val" : "train") + '\n';
    }
    return text;
}

// Written atomically: a resume reads it back (check_same_split).
inline void write_split_tsv(const std::string& path, const DecodedSet& set, const Split& split,
                            const std::filesystem::path& root) {
    const std::string text = split_tsv_text(path, set, split, root);
    write_atomically(path, [&](FILE* f) { return std::fwrite(text.data(), 1, text.size(), f) == text.size(); });
}

// relative path -> "train" / "val".
inline std::map<std::string, std::string> read_split_tsv(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path + ": cannot open the split file");
    std::string line;
    if (!detail::next_line(in, line) || line != "file\tclass\tsubset")
        fail(path + ": line 1: expected the header \"file<TAB>class<TAB>subset\"");
    std::map<std::string, std::string> m;
    for (int n = 2; detail::next_line(in, line); ++n) {
        if (line.empty()) continue;
        const auto f = detail::split_fields(line, '\t');
        const std::string at = path + ": line " + std::to_string(n) + ": ";
        if (f.size() != 3 || f[0].empty() || f[1].empty())
            fail(at + "expected \"file<TAB>class<TAB>subset\", got " + std::to_string(f.size()) + " fields");
        if (f[2] != "train" && f[2] != "val") fail(at + "subset must be train or val, got '" + f[2] + "'");
        if (!m.emplace(f[0], f[2]).second) fail(at + f[0] + " is listed twice");
    }
    return m;
}

// A resumed run must carve the split it started with, or images it trained on could land in
// its validation set, and the val_loss its callbacks compare would be measured on other
// images. Fails naming the split file, how the split differs and what to do: how, for
// settings that move files between the subsets.
inline void check_same_split(const std::string& path, const DecodedSet& set, const Split& split,
                             const std::filesystem::path& root, const std::string& how) {
    auto was = read_split_tsv(path);
    size_t moved = 0, added = 0;
    for (const auto& r : detail::split_rows(path, set, split, root)) {
        auto it = was.find(r.file);
        if (it == was.end()) ++added;
        else {
            moved += (it->second == "val") != r.val;
            was.erase(it);
        }
    }
    const std::string counts = "(files in the other subset: " + std::to_string(moved) + ", new: " + std::to_string(added) +
                               ", gone: " + std::to_string(was.size()) + ")";
    if (moved)
        fail(path + ": this call carves another split than the run did " + counts +
             ", so its validation images could include ones the run trained on; " + how);
    if (added || !was.empty())
        fail(path + ": the data folder's images changed since the run began " + counts +
             ", so its validation set would not be the one its val_loss so far was measured on; restore them, or "
             "start a new run in another folder");
}

// The split a split file describes, for these files. Every file must be listed; listed files
// that are absent here (excluded, unreadable this time) are ignored.
inline Split apply_split(const std::map<std::string, std::string>& subsets, const std::vector<FileEntry>& files,
                         const std::filesystem::path& root) {
    Split s;
    for (size_t i = 0; i < files.size(); ++i) {
        const std::string rel = detail::relative_to(files[i].path, root);
        auto it = subsets.find(rel);
        if (it == subsets.end()) fail(files[i].path + ": not in the split file (as " + rel + ")");
        (it->second == "val" ? s.val : s.train).push_back(int64_t(i));
    }
    return s;
}

// A duplicates list: lines "kind<TAB>key<TAB>file,file,..." (DUPLICATES_TRAINING.tsv) exclude
// all but the first file of each group; a line holding a single path excludes that file.
// '#' lines and blank lines are skipped. `kinds`, if not empty, keeps only groups of those
// kinds ("sha256", "pixels"). Returns class_file_key()s. Overlapping groups are fine: a
// file excluded by one group and first in another stays excluded.
inline std::set<std::string> read_exclude_list(const std::string& path, const std::set<std::string>& kinds = {}) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(path + ": cannot open the exclusion list");
    std::set<std::string> keys;
    std::string line;
    for (int n = 1; detail::next_line(in, line); ++n) {
        if (line.empty() || line[0] == '#') continue;
        const auto f = detail::split_fields(line, '\t');
        const std::string at = path + ": line " + std::to_string(n) + ": ";
        if (f.size() == 1) {
            if (f[0].find(',') != std::string::npos) fail(at + "a single path cannot contain ','");
            keys.insert(class_file_key(f[0]));
            continue;
        }
        if (f.size() != 3)
            fail(at + "expected \"kind<TAB>key<TAB>file,file,...\" or a single path, got " + std::to_string(f.size()) +
                 " tab-separated fields");
        const auto group = detail::split_fields(f[2], ',');
        if (f[0].empty() || group.size() < 2) fail(at + "a duplicate group needs a kind and at least two files");
        for (const auto& g : group)
            if (g.empty()) fail(at + "empty file name in the group");
        if (!kinds.empty() && !kinds.count(f[0])) continue;
        for (size_t i = 1; i < group.size(); ++i) keys.insert(class_file_key(group[i]));
    }
    return keys;
}

}  // namespace tlcpu::data
