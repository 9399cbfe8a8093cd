// MathJax 3, served from the site itself (assets/mathjax/, copied by docs/hooks.py): TeX between
// $…$ or \(…\) inline and $$…$$ or \[…\] displayed, on Markdown, API and notebook pages alike.
// Code (pre, code) is skipped, so a shell's `$` stays as written.
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
};
