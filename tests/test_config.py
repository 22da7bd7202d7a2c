"""Options: defaults, the environment, range checks that name the option, https rules."""

from __future__ import annotations

from typing import Any

import pytest

from tracker import Config, ConfigError, OverflowPolicy, Tracker
from tracker._config import UNSET

from ._support import API_KEY


def build(environ: dict[str, str] | None = None, **options: Any) -> Config:
    return Config.from_options(options, environ=environ or {})


class TestDefaults:
    def test_documented_defaults(self) -> None:
        config = build(api_key="k")
        assert config.region == "us"
        assert config.endpoint == "https://api.aptrinsic.com/v1/events/custom"
        assert config.max_queue_size == 10_000
        assert config.overflow is OverflowPolicy.DROP_NEWEST
        assert config.rate_limit == 200.0
        assert config.flush_at_exit is True
        assert config.sync_mode is False
        assert config.send is True
        assert config.block_timeout is None

    @pytest.mark.parametrize(
        ("region", "host"),
        [
            ("us", "https://api.aptrinsic.com"),
            ("eu", "https://api-eu.aptrinsic.com"),
            ("us2", "https://api-us2.aptrinsic.com"),
            ("EU", "https://api-eu.aptrinsic.com"),
        ],
    )
    def test_region_picks_the_host(self, region: str, host: str) -> None:
        assert build(api_key="k", region=region).endpoint == host + "/v1/events/custom"

    def test_base_url_overrides_region_and_keeps_a_path_prefix(self) -> None:
        config = build(api_key="k", region="eu", base_url="https://proxy.example/px/")
        assert config.endpoint == "https://proxy.example/px/v1/events/custom"


class TestEnvironment:
    def test_every_documented_variable_is_read(self) -> None:
        config = build(
            {
                "PX_API_KEY": "env-key",
                "PX_PRODUCT_KEY": "AP-ENV-1",
                "PX_REGION": "eu",
                "PX_BASE_URL": "http://127.0.0.1:9999",
                "PX_ALLOW_INSECURE_HTTP": "true",
                "PX_MAX_QUEUE_SIZE": "50",
                "PX_OVERFLOW": "drop_oldest",
                "PX_WORKERS": "3",
                "PX_RATE_LIMIT": "25.5",
            }
        )
        assert config.api_key == "env-key"
        assert config.product_key == "AP-ENV-1"
        assert config.region == "eu"
        assert config.base == "http://127.0.0.1:9999"
        assert config.allow_insecure_http is True
        assert config.max_queue_size == 50
        assert config.overflow is OverflowPolicy.DROP_OLDEST
        assert config.workers == 3
        assert config.rate_limit == 25.5

    @pytest.mark.parametrize("off", ["0", "off", "OFF"])
    def test_rate_limit_can_be_turned_off_from_the_environment(self, off: str) -> None:
        assert build({"PX_API_KEY": "k", "PX_RATE_LIMIT": off}).rate_limit is None

    def test_explicit_argument_wins_even_when_it_is_none(self) -> None:
        env = {"PX_API_KEY": "env-key", "PX_RATE_LIMIT": "10", "PX_WORKERS": "3"}
        config = build(env, api_key="arg-key", rate_limit=None, workers=5)
        assert config.api_key == "arg-key"
        assert config.rate_limit is None
        assert config.workers == 5
        assert build(env, rate_limit=UNSET).rate_limit == 10

    def test_bad_environment_value_names_the_variable(self) -> None:
        with pytest.raises(ConfigError, match=r"'workers' \(from PX_WORKERS\) must be an int"):
            build({"PX_API_KEY": "k", "PX_WORKERS": "many"})
        with pytest.raises(ConfigError, match="PX_ALLOW_INSECURE_HTTP"):
            build({"PX_API_KEY": "k", "PX_ALLOW_INSECURE_HTTP": "maybe"})

    def test_tracker_reads_the_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("PX_API_KEY", "from-env")
        monkeypatch.setenv("PX_WORKERS", "2")
        tracker = Tracker(send=False, flush_at_exit=False)
        try:
            assert tracker.config.api_key == "from-env"
            assert tracker.config.workers == 2
        finally:
            tracker.shutdown(0)

    def test_no_api_key_anywhere_is_a_config_error(self) -> None:
        with pytest.raises(ConfigError, match=r"'api_key' is required.*PX_API_KEY"):
            build({})


class TestRanges:
    @pytest.mark.parametrize(
        ("option", "value", "expected"),
        [
            ("max_queue_size", 0, "'max_queue_size' must be an int in 1..10000000 (got 0)"),
            ("workers", 0, "'workers' must be an int in 1..256 (got 0)"),
            ("workers", 2.5, "'workers' must be an int in 1..256 (got 2.5)"),
            ("workers", True, "'workers' must be an int in 1..256 (got True)"),
            ("rate_limit", 0, "'rate_limit' must be a number > 0 (got 0)"),
            ("rate_limit", -5.0, "'rate_limit' must be a number > 0 (got -5.0)"),
            ("max_retries", -1, "'max_retries' must be an int in 0..100 (got -1)"),
            ("max_retry_time", 0, "'max_retry_time' must be a number > 0 (got 0)"),
            ("timeout", float("nan"), "'timeout' must be a number > 0 (got nan)"),
            ("exit_timeout", -1, "'exit_timeout' must be a number >= 0 (got -1)"),
            ("block_timeout", -0.1, "'block_timeout' must be a number >= 0 (got -0.1)"),
            ("overflow", "drop_everything", "'overflow' must be one of 'drop_newest'"),
            ("region", "mars", "'region' must be one of 'us', 'eu', 'us2' (got 'mars')"),
            ("flush_at_exit", "yes", "'flush_at_exit' must be True or False (got 'yes')"),
            ("on_error", "print", "'on_error' must be callable or None (got 'print')"),
            ("product_key", "", "'product_key' must be a non-empty str or None (got '')"),
        ],
    )
    def test_out_of_range_names_option_range_and_value(
        self, option: str, value: Any, expected: str
    ) -> None:
        with pytest.raises(ConfigError) as info:
            build(api_key="k", **{option: value})
        assert expected in str(info.value)
        assert isinstance(info.value, ValueError)

    def test_backoff_max_below_base_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="'backoff_max' must be >= 'backoff_base'"):
            build(api_key="k", backoff_base=2, backoff_max=1)

    def test_unknown_option_is_refused(self) -> None:
        with pytest.raises(ConfigError, match="unknown option 'wokers'"):
            build(api_key="k", wokers=3)

    def test_tracker_constructor_raises_config_error(self) -> None:
        with pytest.raises(ConfigError, match="'workers'"):
            Tracker(API_KEY, workers=0)

    def test_overflow_accepts_enum_and_strings(self) -> None:
        assert build(api_key="k", overflow="BLOCK").overflow is OverflowPolicy.BLOCK
        assert build(api_key="k", overflow="drop-oldest").overflow is OverflowPolicy.DROP_OLDEST
        assert build(api_key="k", overflow=OverflowPolicy.RAISE).overflow is OverflowPolicy.RAISE


class TestSecurity:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8080",
            "http://127.5.6.7",
            "http://localhost:1234",
            "http://[::1]:8000",
            "https://api.example.com",
        ],
    )
    def test_http_is_fine_on_loopback_and_https_anywhere(self, url: str) -> None:
        assert build(api_key="k", base_url=url).base == url

    @pytest.mark.parametrize("url", ["http://api.example.com", "http://10.0.0.5:80"])
    def test_plain_http_elsewhere_needs_allow_insecure_http(self, url: str) -> None:
        with pytest.raises(ConfigError, match="must use https:// for a non-loopback host"):
            build(api_key="k", base_url=url)
        assert build(api_key="k", base_url=url, allow_insecure_http=True).base == url

    @pytest.mark.parametrize("url", ["ftp://x.example", "api.aptrinsic.com", "https://"])
    def test_base_url_must_be_an_http_url_with_a_host(self, url: str) -> None:
        with pytest.raises(ConfigError, match="'base_url'"):
            build(api_key="k", base_url=url)

    def test_api_key_is_not_in_any_repr(self) -> None:
        config = build(api_key="sk-very-secret-123")
        assert "sk-very-secret-123" not in repr(config)
        assert "'***'" in repr(config)
        tracker = Tracker("sk-very-secret-123", send=False, flush_at_exit=False)
        try:
            assert "sk-very-secret-123" not in repr(tracker)
        finally:
            tracker.shutdown(0)

    @pytest.mark.parametrize("key", ["has space", "line\nbreak", "tab\there", "ünïcode"])
    def test_unsendable_api_key_is_refused_without_echoing_it(self, key: str) -> None:
        with pytest.raises(ConfigError) as info:
            build(api_key=key)
        assert key not in str(info.value)
        assert "value not shown" in str(info.value)
