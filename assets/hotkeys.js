// ILA Studio keyboard shortcuts for the Classify tab (loaded through launch(head=...)).
// 1-5 pick a candidate, Enter confirms the top-1, U marks unsure, Z undoes (this session's last action),
// Y redoes, arrows move between images.
// Keys typed into a text field, and keys while another tab is shown, are left alone.
(() => {
  const KEYS = {
    "1": "ila-pick-1", "2": "ila-pick-2", "3": "ila-pick-3", "4": "ila-pick-4", "5": "ila-pick-5",
    "Enter": "ila-confirm", "u": "ila-unsure", "U": "ila-unsure", "z": "ila-undo", "Z": "ila-undo",
    "y": "ila-redo", "Y": "ila-redo",
    "ArrowRight": "ila-next", "ArrowLeft": "ila-prev",
  };
  const typing = (el) =>
    !!el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
  const visible = (el) => !!el && el.offsetParent !== null;
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat || typing(event.target)) return;
    if (event.key === "Enter" && event.target && event.target.tagName === "BUTTON") return; // native click
    const id = KEYS[event.key];
    if (!id) return;
    const panel = document.getElementById("ila-classify-actions");
    if (!visible(panel)) return;
    const node = document.getElementById(id);
    const button = node && (node.tagName === "BUTTON" ? node : node.querySelector("button"));
    if (!button || button.disabled || !visible(button)) return;
    event.preventDefault();
    button.click();
  });
})();
