// tlcpu: classification metrics with scikit-learn's definitions, and its text report.
//
// classification_report(y_true, y_pred, classes) equals sklearn's
//   classification_report(y_true, y_pred, labels=range(len(classes)), target_names=classes,
//                         zero_division=0)
// number for number and, through text(), byte for byte (checked against sklearn 1.2.1):
// precision = tp/(tp+fp), recall = tp/(tp+fn), each 0 when its denominator is 0 (sklearn's
// zero_division=0, without the warning); f1 = 2pr/(p+r), 0 when p+r = 0; the macro average is
// the unweighted mean over all classes (those never seen included), the weighted average is
// weighted by support, and both averages carry support n. Sums are taken in numpy's pairwise
// order, so even the last bit of an average, and hence its rounding in text(), matches.
#pragma once
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tlcpu/core/error.hpp"

namespace tlcpu {

struct ClassMetrics {
    double precision = 0, recall = 0, f1 = 0;
    int64_t support = 0;
};

struct ClassificationReport {
    std::vector<std::string> classes;
    std::vector<std::vector<int64_t>> confusion;  // rows = true class, columns = predicted
    int64_t n = 0;
    double accuracy = 0;
    std::vector<ClassMetrics> per_class;
    ClassMetrics macro_avg, weighted_avg;

    // Laid out exactly as sklearn's classification_report(..., digits=digits).
    std::string text(int digits = 2) const;
    // The confusion matrix as aligned text: one row per true class, one column per prediction.
    std::string confusion_text() const;
    // {"n", "accuracy", "classes", "confusion" (rows = true class),
    //  "per_class": {name: {"precision", "recall", "f1", "support"}}, "macro_avg", "weighted_avg"}
    nlohmann::json to_json() const;
    // The inverse of to_json(); a missing key, a wrong type or an inconsistent shape is an Error.
    static ClassificationReport from_json(const nlohmann::json& j);
};

namespace metrics_detail {

// numpy's float64 add.reduce (pairwise_sum in loops_utils.h): blocks of up to 128 elements
// summed with 8 accumulators, larger ranges split in two. np.sum, np.mean and np.average
// all reduce this way, so using it reproduces sklearn's averages to the last bit.
inline double pairwise_sum(const double* a, size_t n) {
    if (n < 8) {
        double r = 0.;
        for (size_t i = 0; i < n; ++i) r += a[i];
        return r;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        size_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + size_t(j)];
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    size_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

inline double np_sum(const std::vector<double>& v) { return 0. + pairwise_sum(v.data(), v.size()); }

// Python's len() of a UTF-8 string: code points, which is what str.format pads by.
inline size_t py_len(const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
}

// Python's "{:>{w}}": right-aligned in w code points.
inline std::string rjust(const std::string& s, size_t w) {
    const size_t len = py_len(s);
    return len >= w ? s : std::string(w - len, ' ') + s;
}
inline std::string ljust(const std::string& s, size_t w) {
    const size_t len = py_len(s);
    return len >= w ? s : s + std::string(w - len, ' ');
}

// Python's "{:.{digits}f}": correctly rounded (ties by the exact binary value), and unlike
// printf independent of the C locale.
inline std::string fixed(double v, int digits) {
    char buf[400];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, digits);
    if (r.ec != std::errc()) fail("cannot format the number " + std::to_string(v));
    return std::string(buf, r.ptr);
}

}  // namespace metrics_detail

inline ClassificationReport classification_report(const std::vector<int>& y_true, const std::vector<int>& y_pred,
                                                   const std::vector<std::string>& classes) {
    using metrics_detail::np_sum;
    const std::string where = "classification_report: ";
    check(!classes.empty(), where + "no classes");
    check(y_true.size() == y_pred.size(), where + std::to_string(y_true.size()) + " true labels but " +
                                              std::to_string(y_pred.size()) + " predictions");
    check(!y_true.empty(), where + "no samples");
    std::set<std::string> seen;
    for (const auto& c : classes) check(seen.insert(c).second, where + "class name '" + c + "' appears twice");
    const int k = int(classes.size());

    ClassificationReport r;
    r.classes = classes;
    r.confusion.assign(size_t(k), std::vector<int64_t>(size_t(k), 0));
    for (size_t i = 0; i < y_true.size(); ++i) {
        const int t = y_true[i], p = y_pred[i];
        check(t >= 0 && t < k, where + "sample " + std::to_string(i) + ": true label " + std::to_string(t) +
                                   " is not a class index (0.." + std::to_string(k - 1) + ")");
        check(p >= 0 && p < k, where + "sample " + std::to_string(i) + ": predicted label " + std::to_string(p) +
                                   " is not a class index (0.." + std::to_string(k - 1) + ")");
        ++r.confusion[size_t(t)][size_t(p)];
    }
    r.n = int64_t(y_true.size());

    int64_t trace = 0;
    const size_t kz = classes.size();
    std::vector<double> p(kz), rc(kz), f(kz), pw(kz), rw(kz), fw(kz);  // per class, and weighted by support
    for (int c = 0; c < k; ++c) {
        int64_t tp = r.confusion[size_t(c)][size_t(c)], pred = 0, truth = 0;
        for (int o = 0; o < k; ++o) {
            pred += r.confusion[size_t(o)][size_t(c)];
            truth += r.confusion[size_t(c)][size_t(o)];
        }
        trace += tp;
        ClassMetrics m;
        m.precision = pred ? double(tp) / double(pred) : 0.0;
        m.recall = truth ? double(tp) / double(truth) : 0.0;
        const double denom = m.precision + m.recall;
        m.f1 = denom == 0.0 ? 0.0 : 2.0 * m.precision * m.recall / denom;  // sklearn's evaluation order
        m.support = truth;
        r.per_class.push_back(m);
        p[size_t(c)] = m.precision;
        rc[size_t(c)] = m.recall;
        f[size_t(c)] = m.f1;
        pw[size_t(c)] = m.precision * double(truth);
        rw[size_t(c)] = m.recall * double(truth);
        fw[size_t(c)] = m.f1 * double(truth);
    }
    r.accuracy = double(trace) / double(r.n);
    const double kk = double(k), nn = double(r.n);
    r.macro_avg = {np_sum(p) / kk, np_sum(rc) / kk, np_sum(f) / kk, r.n};
    r.weighted_avg = {np_sum(pw) / nn, np_sum(rw) / nn, np_sum(fw) / nn, r.n};
    return r;
}

inline std::string ClassificationReport::text(int digits) const {
    using namespace metrics_detail;
    check(digits >= 0 && digits <= 100, "ClassificationReport::text: digits must be in 0..100, not " +
                                            std::to_string(digits));
    size_t width = std::string("weighted avg").size();
    for (const auto& c : classes) width = std::max(width, py_len(c));
    width = std::max(width, size_t(digits));

    // sklearn quirk, reproduced: with no correct prediction at all its counts come out as
    // float64 ("Pathological case" in multilabel_confusion_matrix), so supports print as "7.0".
    int64_t correct = 0;
    for (size_t c = 0; c < confusion.size(); ++c) correct += c < confusion[c].size() ? confusion[c][c] : 0;
    auto count = [&](int64_t v) { return std::to_string(v) + (correct == 0 ? ".0" : ""); };
    auto row = [&](const std::string& name, const ClassMetrics& m) {
        return rjust(name, width) + " " + " " + rjust(fixed(m.precision, digits), 9) + " " +
               rjust(fixed(m.recall, digits), 9) + " " + rjust(fixed(m.f1, digits), 9) + " " +
               rjust(count(m.support), 9) + "\n";
    };
    std::string out = rjust("", width) + " ";
    for (const char* h : {"precision", "recall", "f1-score", "support"}) out += " " + rjust(h, 9);
    out += "\n\n";
    for (size_t c = 0; c < classes.size() && c < per_class.size(); ++c) out += row(classes[c], per_class[c]);
    out += "\n";
    // sklearn labels the micro average "accuracy" only when every requested label occurs in
    // y_true or y_pred; a class that never does turns it back into "micro avg". With every
    // prediction a class index, micro precision = recall = f1 = accuracy either way.
    bool all_seen = true;
    for (size_t c = 0; c < classes.size(); ++c) {
        int64_t predicted = 0;
        for (const auto& rw : confusion) predicted += c < rw.size() ? rw[c] : 0;
        if (c < per_class.size() && per_class[c].support == 0 && predicted == 0) all_seen = false;
    }
    if (all_seen)
        out += rjust("accuracy", width) + " " + " " + std::string(9, ' ') + " " + std::string(9, ' ') + " " +
               rjust(fixed(accuracy, digits), 9) + " " + rjust(count(n), 9) + "\n";
    else
        out += row("micro avg", {accuracy, accuracy, accuracy, n});
    out += row("macro avg", macro_avg);
    out += row("weighted avg", weighted_avg);
    return out;
}

inline std::string ClassificationReport::confusion_text() const {
    using namespace metrics_detail;
    const std::string corner = "true \\ predicted";
    size_t label_w = py_len(corner);
    for (const auto& c : classes) label_w = std::max(label_w, py_len(c));
    std::vector<size_t> col_w(classes.size());
    for (size_t c = 0; c < classes.size(); ++c) {
        col_w[c] = py_len(classes[c]);
        for (const auto& rw : confusion)
            if (c < rw.size()) col_w[c] = std::max(col_w[c], std::to_string(rw[c]).size());
    }
    std::string out = ljust(corner, label_w);
    for (size_t c = 0; c < classes.size(); ++c) out += "  " + rjust(classes[c], col_w[c]);
    out += "\n";
    for (size_t t = 0; t < classes.size(); ++t) {
        out += ljust(classes[t], label_w);
        for (size_t c = 0; c < classes.size(); ++c) {
            const int64_t v = t < confusion.size() && c < confusion[t].size() ? confusion[t][c] : 0;
            out += "  " + rjust(std::to_string(v), col_w[c]);
        }
        out += "\n";
    }
    return out;
}

inline nlohmann::json ClassificationReport::to_json() const {
    auto metrics = [](const ClassMetrics& m) {
        return nlohmann::json{{"precision", m.precision}, {"recall", m.recall}, {"f1", m.f1}, {"support", m.support}};
    };
    nlohmann::json pc = nlohmann::json::object();
    for (size_t c = 0; c < classes.size() && c < per_class.size(); ++c) pc[classes[c]] = metrics(per_class[c]);
    return nlohmann::json{{"n", n},
                          {"accuracy", accuracy},
                          {"classes", classes},
                          {"confusion", confusion},
                          {"per_class", pc},
                          {"macro_avg", metrics(macro_avg)},
                          {"weighted_avg", metrics(weighted_avg)}};
}

inline ClassificationReport ClassificationReport::from_json(const nlohmann::json& j) {
    const std::string where = "classification report JSON: ";
    auto need = [&](const nlohmann::json& o, const char* key, const std::string& in) -> const nlohmann::json& {
        check(o.is_object(), where + in + " is not an object");
        auto it = o.find(key);
        check(it != o.end(), where + in + " has no \"" + key + "\"");
        return *it;
    };
    auto number = [&](const nlohmann::json& o, const char* key, const std::string& in) {
        const auto& v = need(o, key, in);
        check(v.is_number(), where + in + ": \"" + key + "\" is not a number");
        return v.get<double>();
    };
    auto integer = [&](const nlohmann::json& o, const char* key, const std::string& in) {
        const auto& v = need(o, key, in);
        check(v.is_number_integer(), where + in + ": \"" + key + "\" is not an integer");
        return v.get<int64_t>();
    };
    auto metrics = [&](const nlohmann::json& o, const std::string& in) {
        return ClassMetrics{number(o, "precision", in), number(o, "recall", in), number(o, "f1", in),
                            integer(o, "support", in)};
    };
    ClassificationReport r;
    r.n = integer(j, "n", "the top level");
    r.accuracy = number(j, "accuracy", "the top level");
    const auto& cls = need(j, "classes", "the top level");
    check(cls.is_array(), where + "\"classes\" is not an array");
    for (const auto& c : cls) {
        check(c.is_string(), where + "\"classes\" holds a non-string");
        r.classes.push_back(c.get<std::string>());
    }
    const size_t k = r.classes.size();
    const auto& conf = need(j, "confusion", "the top level");
    check(conf.is_array() && conf.size() == k,
          where + "\"confusion\" is not an array of " + std::to_string(k) + " rows (one per class)");
    int64_t total = 0;
    for (const auto& rw : conf) {
        check(rw.is_array() && rw.size() == k, where + "a \"confusion\" row is not an array of " + std::to_string(k) +
                                                   " counts");
        std::vector<int64_t> v;
        for (const auto& x : rw) {
            check(x.is_number_integer() && x.get<int64_t>() >= 0, where + "a \"confusion\" count is not a count");
            v.push_back(x.get<int64_t>());
            total += v.back();
        }
        r.confusion.push_back(std::move(v));
    }
    check(total == r.n, where + "the confusion matrix counts " + std::to_string(total) + " samples but \"n\" is " +
                            std::to_string(r.n));
    const auto& pc = need(j, "per_class", "the top level");
    check(pc.is_object() && pc.size() == k, where + "\"per_class\" does not hold exactly the " + std::to_string(k) +
                                                " classes");
    for (const auto& c : r.classes) {
        auto it = pc.find(c);
        check(it != pc.end(), where + "\"per_class\" has no class '" + c + "'");
        r.per_class.push_back(metrics(*it, "\"per_class\" entry '" + c + "'"));
    }
    r.macro_avg = metrics(need(j, "macro_avg", "the top level"), "\"macro_avg\"");
    r.weighted_avg = metrics(need(j, "weighted_avg", "the top level"), "\"weighted_avg\"");
    return r;
}

}  // namespace tlcpu
