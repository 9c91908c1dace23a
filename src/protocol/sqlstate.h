// SQLSTATE codes sluice sends (PostgreSQL's Appendix A). Constants only; thread-safe.
#pragma once

namespace sluice::sqlstate {
inline constexpr const char* kProtocolViolation = "08P01";
inline constexpr const char* kConnectionFailure = "08006";
inline constexpr const char* kConnectionException = "08000";
inline constexpr const char* kSqlclientUnableToEstablish = "08001";
inline constexpr const char* kInvalidAuthorization = "28000";
inline constexpr const char* kInvalidPassword = "28P01";
inline constexpr const char* kInvalidCatalogName = "3D000";
inline constexpr const char* kTooManyConnections = "53300";
inline constexpr const char* kQueryCanceled = "57014";
inline constexpr const char* kAdminShutdown = "57P01";
inline constexpr const char* kCannotConnectNow = "57P03";
inline constexpr const char* kFeatureNotSupported = "0A000";
inline constexpr const char* kIdleInTransactionTimeout = "25P03";
inline constexpr const char* kIdleSessionTimeout = "57P05";
inline constexpr const char* kInternalError = "XX000";
inline constexpr const char* kSyntaxError = "42601";
inline constexpr const char* kInvalidParameterValue = "22023";
inline constexpr const char* kUndefinedObject = "42704";
inline constexpr const char* kObjectNotInPrerequisiteState = "55000";
inline constexpr const char* kCantChangeRuntimeParam = "55P02";
}  // namespace sluice::sqlstate
