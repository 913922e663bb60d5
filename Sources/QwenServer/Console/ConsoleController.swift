import Hummingbird
import NIOCore

/// The web console: a page and its scripts, compiled into the binary (`Console/web`), served
/// with headers that let the page run only its own scripts and talk only to this origin.
struct ConsoleController {
    struct Asset {
        let bytes: [UInt8]
        let type: String
    }

    /// Every file of `Console/web` by name (the page at `/`, the rest under `/console/`).
    static let assets: [String: Asset] = [
        "index.html": Asset(bytes: PackageResources.index_html, type: "text/html; charset=utf-8"),
        "console.css": Asset(bytes: PackageResources.console_css, type: "text/css; charset=utf-8"),
        "icon.svg": Asset(bytes: PackageResources.icon_svg, type: "image/svg+xml"),
        "main.js": Asset(bytes: PackageResources.main_js, type: "text/javascript; charset=utf-8"),
        "api.js": Asset(bytes: PackageResources.api_js, type: "text/javascript; charset=utf-8"),
        "dom.js": Asset(bytes: PackageResources.dom_js, type: "text/javascript; charset=utf-8"),
        "markdown.js": Asset(bytes: PackageResources.markdown_js, type: "text/javascript; charset=utf-8"),
        "charts.js": Asset(bytes: PackageResources.charts_js, type: "text/javascript; charset=utf-8"),
        "chat.js": Asset(bytes: PackageResources.chat_js, type: "text/javascript; charset=utf-8"),
        "compare.js": Asset(bytes: PackageResources.compare_js, type: "text/javascript; charset=utf-8"),
        "tuning.js": Asset(bytes: PackageResources.tuning_js, type: "text/javascript; charset=utf-8"),
        "models.js": Asset(bytes: PackageResources.models_js, type: "text/javascript; charset=utf-8"),
        "server.js": Asset(bytes: PackageResources.server_js, type: "text/javascript; charset=utf-8"),
    ]

    /// Scripts and styles from this origin only, never inline; requests to this origin only;
    /// never framed. Model output and file names are inserted as text by the scripts.
    static let contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        + "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

    func addRoutes(to router: Router<QwenRequestContext>) {
        router.get("/") { _, _ -> Response in Self.response("index.html") }
        router.get("/console/:file") { _, ctx -> Response in
            let name = ctx.pathParameter("file")
            guard name != "index.html", Self.assets[name] != nil else {
                throw APIError(.notFound, "the console has no file '\(name.prefix(64))'", code: "not_found")
            }
            return Self.response(name)
        }
    }

    static func response(_ name: String) -> Response {
        let asset = assets[name]!
        return Response(status: .ok, headers: [
            .contentType: asset.type,
            .contentSecurityPolicy: contentSecurityPolicy,
            .xContentTypeOptions: "nosniff",
            .init("X-Frame-Options")!: "DENY",
            .init("Referrer-Policy")!: "no-referrer",
            .init("Cross-Origin-Opener-Policy")!: "same-origin",
            .cacheControl: "no-cache",
        ], body: ResponseBody(byteBuffer: ByteBuffer(bytes: asset.bytes)))
    }
}
