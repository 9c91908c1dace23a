// Logging: one spdlog logger shared by every thread (spdlog's loggers are thread-safe).
// initLogging() runs once on the main thread before workers start.
#pragma once

#include <spdlog/spdlog.h>

#include <string>

namespace sluice {

void initLogging(const std::string& logfile, int verbose);

}  // namespace sluice

#define SLOG_DEBUG(...) SPDLOG_DEBUG(__VA_ARGS__)
#define SLOG_INFO(...) spdlog::info(__VA_ARGS__)
#define SLOG_WARN(...) spdlog::warn(__VA_ARGS__)
#define SLOG_ERROR(...) spdlog::error(__VA_ARGS__)
