#include "protocol/session_state.h"

#include <cstring>
#include <vector>

#include "protocol/sql_lexer.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace sluice::protocol {

const char* sessionStateLabel(SessionState s) {
  static constexpr const char* kLabels[] = {"",
#define SLUICE_X(e, label, what) label,
                                            SLUICE_SESSION_STATES(SLUICE_X)
#undef SLUICE_X
  };
  return kLabels[size_t(s)];
}

const char* sessionStateWhat(SessionState s) {
  static constexpr const char* kWhat[] = {"",
#define SLUICE_X(e, label, what) what,
                                          SLUICE_SESSION_STATES(SLUICE_X)
#undef SLUICE_X
  };
  return kWhat[size_t(s)];
}

namespace {

// `s` starts with the lower-case `word` (case-insensitively).
bool startsWithCi(std::string_view s, std::string_view word) {
  if (s.size() < word.size()) return false;
  for (size_t i = 0; i < word.size(); ++i) {
    if (sqlLower(s[i]) != word[i]) return false;
  }
  return true;
}

// ---- the prefilter ----

// One pass over the bytes: is there a ';' (more than one statement, or one inside a literal) or
// a 'v' of any case (as in "advisory")? SSE2 (x86-64's baseline) compares 16 bytes at a time
// into one accumulator; the last block overlaps the one before it instead of a scalar tail.
bool mayNeedLexing(std::string_view s) {
  const char* p = s.data();
  const size_t n = s.size();
#if defined(__SSE2__)
  if (n >= 16) {
    const __m128i k20 = _mm_set1_epi8(0x20);
    const __m128i kv = _mm_set1_epi8('v');
    const __m128i ksemi = _mm_set1_epi8(';');
    __m128i acc = _mm_setzero_si128();
    auto block = [&](size_t i) {
      __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      acc = _mm_or_si128(
          acc, _mm_or_si128(_mm_cmpeq_epi8(_mm_or_si128(b, k20), kv), _mm_cmpeq_epi8(b, ksemi)));
    };
    for (size_t i = 0; i + 16 < n; i += 16) block(i);
    block(n - 16);
    return _mm_movemask_epi8(acc) != 0;
  }
#endif
  bool hit = false;
  for (size_t i = 0; i < n; ++i) hit |= (p[i] | 0x20) == 'v' || p[i] == ';';
  return hit;
}

// Four bytes as inspectSessionState() reads them, for comparing the first word with a command.
constexpr uint32_t word4(const char (&w)[5]) {
  return uint32_t(uint8_t(w[0])) | uint32_t(uint8_t(w[1])) << 8 | uint32_t(uint8_t(w[2])) << 16 |
         uint32_t(uint8_t(w[3])) << 24;
}

// "advisory" (any case) somewhere in `s`; only called when scan() saw a 'v' (VALUES, level,
// server...), so memchr finds the few candidates rather than a loop over every byte.
[[gnu::noinline]] bool hasAdvisory(std::string_view s) {
  if (s.size() < 8) return false;
  const char* last = s.data() + s.size() - 6;  // the 'v' of an "advisory" ending the text
  for (char v : {'v', 'V'}) {
    for (const char* p = s.data() + 2; p <= last; ++p) {
      p = static_cast<const char*>(std::memchr(p, v, size_t(last - p) + 1));
      if (p == nullptr) break;
      if (startsWithCi(std::string_view(p - 2, 8), "advisory")) return true;
    }
  }
  return false;
}

// ---- the lexer (candidates only) ----

using Token = SqlToken;
bool eq(const Token& t, std::string_view lower_word) { return sqlWordIs(t, lower_word); }

bool isAdvisoryLockFunction(const Token& t) {
  static constexpr std::string_view kNames[] = {"pg_advisory_lock", "pg_advisory_lock_shared",
                                                "pg_try_advisory_lock",
                                                "pg_try_advisory_lock_shared"};
  for (std::string_view name : kNames) {
    if (eq(t, name) || (t.type == Token::kQuotedIdent && t.text == name)) return true;
  }
  return false;
}

SessionState classify(const std::vector<Token>& t) {
  const size_t n = t.size();
  auto at = [&](size_t k, std::string_view w) { return k < n && eq(t[k], w); };
  // A function call anywhere in the statement: pg_advisory_lock(...), also qualified.
  for (size_t k = 0; k + 1 < n; ++k) {
    if (isAdvisoryLockFunction(t[k]) && t[k + 1].type == Token::kPunct && t[k + 1].text == "(") {
      return SessionState::kAdvisoryLock;
    }
  }
  if (at(0, "listen")) return SessionState::kListen;
  if (at(0, "create")) {
    size_t k = 1;
    if (at(k, "or") && at(k + 1, "replace")) k += 2;
    if (at(k, "global") || at(k, "local")) ++k;
    if (!at(k, "temp") && !at(k, "temporary")) return SessionState::kNone;
    for (size_t j = k; j + 2 < n; ++j) {  // ON COMMIT DROP: gone at the end of the transaction
      if (at(j, "on") && at(j + 1, "commit") && at(j + 2, "drop")) return SessionState::kNone;
    }
    return SessionState::kTempTable;
  }
  if (at(0, "declare")) {
    // DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [WITH|WITHOUT HOLD]
    // FOR query: only the words before FOR are the cursor's options.
    for (size_t k = 2; k + 1 < n && !at(k, "for"); ++k) {
      if (at(k, "with") && at(k + 1, "hold")) return SessionState::kWithHold;
    }
    return SessionState::kNone;
  }
  if (at(0, "prepare")) {
    // PREPARE TRANSACTION 'gid' is two-phase commit, not a statement.
    if (at(1, "transaction") && n > 2 && t[2].type == Token::kLiteral) return SessionState::kNone;
    if (n < 3 || (t[1].type != Token::kWord && t[1].type != Token::kQuotedIdent)) {
      return SessionState::kNone;
    }
    size_t k = 2;
    if (t[k].type == Token::kPunct && t[k].text == "(") {
      int depth = 0;
      for (; k < n; ++k) {
        if (t[k].type != Token::kPunct) continue;
        if (t[k].text == "(") ++depth;
        if (t[k].text == ")" && --depth == 0) break;
      }
      ++k;
    }
    return at(k, "as") ? SessionState::kSqlPrepare : SessionState::kNone;
  }
  if (at(0, "set")) {
    size_t k = 1;
    if (at(k, "session") && !at(k + 1, "characteristics")) {
      // SET SESSION ROLE, SET SESSION SESSION AUTHORIZATION, SET SESSION AUTHORIZATION
      if (at(k + 1, "authorization")) return SessionState::kSessionAuthorization;
      ++k;
    }
    if (at(k, "role")) return SessionState::kSessionAuthorization;
    if (at(k, "session") && at(k + 1, "authorization")) return SessionState::kSessionAuthorization;
  }
  return SessionState::kNone;
}

[[gnu::noinline, gnu::cold]] SessionState lex(std::string_view sql) {
  SessionState found = SessionState::kNone;
  forEachSqlStatement(sql, [&](const std::vector<Token>& toks) {
    found = classify(toks);
    return found != SessionState::kNone;
  });
  return found;
}

// One statement: only its first word (after whitespace; a comment is looked past by the lexer)
// can make it one of the commands.
inline bool firstWordMayBeState(std::string_view sql) {
  size_t i = 0;
  while (i < sql.size() && uint8_t(sql[i]) <= ' ') ++i;
  std::string_view rest = sql.substr(i);
  if (rest.size() < 4) return false;  // shorter than any of the commands
  if (rest[0] == '-' || rest[0] == '/') return true;
  uint32_t w = (uint32_t(uint8_t(rest[0])) | uint32_t(uint8_t(rest[1])) << 8 |
                uint32_t(uint8_t(rest[2])) << 16 | uint32_t(uint8_t(rest[3])) << 24) |
               0x20202020;  // one load on x86
  return w == word4("list") || w == word4("crea") || w == word4("decl") || w == word4("prep") ||
         ((w & 0xffffff) == (word4("set ") & 0xffffff) && !sqlIdentChar(uint8_t(rest[3])));
}

// The prefilter saw a ';' or a 'v': out of line, so that the common path needs no stack frame.
[[gnu::noinline]] SessionState afterPrefilterHit(std::string_view sql) {
  if (std::memchr(sql.data(), ';', sql.size()) != nullptr || hasAdvisory(sql)) return lex(sql);
  return firstWordMayBeState(sql) ? lex(sql) : SessionState::kNone;
}

}  // namespace

SessionState inspectSessionState(std::string_view sql) {
  // A trailing ';' (pgbench, many drivers) does not make a second statement.
  if (!sql.empty() && sql.back() == ';') sql.remove_suffix(1);
  if (mayNeedLexing(sql)) return afterPrefilterHit(sql);
  return firstWordMayBeState(sql) ? lex(sql) : SessionState::kNone;
}

}  // namespace sluice::protocol
