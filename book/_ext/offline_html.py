"""A Sphinx extension for pages that work offline with a clean browser console and typeset math (checked by
tests/browser).

sphinx-thebe adds its inline configuration script to every page twice, and the second copy fails in the browser
("Identifier 'THEBE_JS_URL' has already been declared"): one copy has filename None, the other "". Keep the first
copy of each script (same file, same attributes and body).
"""


def _unique_scripts(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context["script_files"]:
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # in place: the list is the builder's, and extensions that run after this one (sphinx.ext.mathjax among them)
    # append their scripts to it; a new list here would silently drop them (no page would load MathJax)
    context["script_files"][:] = unique


def setup(app):
    # MathJax on every page, not only on pages with equations: the navigation's chapter titles carry math too
    app.set_html_assets_policy("always")
    # early: Sphinx stops calling html-page-context handlers once one returns a template name
    app.connect("html-page-context", _unique_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
