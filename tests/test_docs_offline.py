"""``/docs`` and ``/redoc`` work without Internet access: every asset comes from this node."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pacs.config import Settings
from viewer_api.app import create_app

_URL_ATTRIBUTE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
_JS_URL = re.compile(r"""(?:url|spec-url)\s*[:=]\s*["']([^"']+)["']""")
_EXPECTED_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    app = create_app(Settings(data_dir=tmp_path, emr_feed=False))
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()


def referenced_urls(html: str) -> list[str]:
    """Every URL the page loads: src/href attributes and the spec URL given to the script."""
    return _URL_ATTRIBUTE.findall(html) + _JS_URL.findall(html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_only_local_urls(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    urls = referenced_urls(response.text)
    assert any(url.endswith(".js") for url in urls), urls
    assert "/openapi.json" in urls
    assert "://" not in response.text and "//" not in "".join(urls), urls
    for url in urls:
        assert url.startswith("/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = Path(url).suffix
        if suffix in _EXPECTED_TYPES:
            assert _EXPECTED_TYPES[suffix] in asset.headers["content-type"], url
            assert len(asset.content) > 1000, url


def test_swagger_ui_loads_its_css(client: TestClient) -> None:
    css = [url for url in referenced_urls(client.get("/docs").text) if url.endswith(".css")]
    assert css == ["/docs/assets/swagger-ui.css"]


def test_docs_assets_behind_a_proxy_prefix(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, emr_feed=False))
    with TestClient(app, root_path="/pacs") as client:
        urls = referenced_urls(client.get("/docs").text)
    app.state.engine.dispose()
    assert "/pacs/docs/assets/swagger-ui-bundle.js" in urls
    assert "/pacs/openapi.json" in urls


def test_unknown_docs_asset_is_404(client: TestClient) -> None:
    assert client.get("/docs/assets/../../pacs/config.py").status_code == 404
    assert client.get("/docs/assets/secret.js").status_code == 404
