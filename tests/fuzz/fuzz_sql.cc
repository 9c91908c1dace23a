// Fuzz target: arbitrary bytes as a query text through the SQL inspectors that run on every
// Query and Parse: protocol::inspectSessionEffects and searchPathAfter (session_state.h),
// inspectSql / mayDeallocate / deallocatesAll (prepared_statements.h), and the lexer they share
// (sql_lexer.h, forEachSqlStatement). Invariants: mayDeallocate() is a true prefilter (false only
// when inspectSql finds nothing); every token lies inside the text; a kPunct token is one byte.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "protocol/prepared_statements.h"
#include "protocol/session_state.h"
#include "protocol/sql_lexer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace sluice;
  // Own the bytes in a std::string so ASan sees reads past the end of the text.
  std::string owned(reinterpret_cast<const char*>(data), size);
  std::string_view sql = owned;

  protocol::SessionEffects fx = protocol::inspectSessionEffects(sql);
  if (fx.state != protocol::SessionState::kNone) {
    fuzz::check(*protocol::sessionStateLabel(fx.state) != '\0', "session state without a label");
  }
  (void)protocol::searchPathAfter(sql);

  protocol::SqlInspection si = protocol::inspectSql(sql);
  if (!protocol::mayDeallocate(sql)) {
    fuzz::check(si.command == protocol::SqlCommand::kOther,
                "mayDeallocate() false but inspectSql() found DEALLOCATE/DISCARD");
  }
  fuzz::check(si.index >= 0, "negative statement index");
  (void)protocol::deallocatesAll(sql);

  protocol::forEachSqlStatement(sql, [&](const std::vector<protocol::SqlToken>& toks) {
    for (const protocol::SqlToken& t : toks) {
      // (A U&"..." identifier is an empty view: its escapes are not decoded.)
      fuzz::check(t.text.empty() || (t.text.data() >= sql.data() &&
                                     t.text.data() + t.text.size() <= sql.data() + sql.size()),
                  "token outside the text");
      if (t.type == protocol::SqlToken::kPunct) fuzz::check(t.text.size() == 1, "long kPunct");
      if (t.type == protocol::SqlToken::kQuotedIdent || t.type == protocol::SqlToken::kWord) {
        (void)protocol::sqlName(t);
      }
      std::string value;
      (void)protocol::sqlStringValue(t, &value);
    }
    return false;
  });
  return 0;
}
