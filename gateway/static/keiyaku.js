// Signing pages: document tabs, text boxes placed on the pages, checklist, confirmation dialogs.
// No inline script (the pages' Content-Security-Policy allows only this file).
(function () {
  "use strict";

  function showTab(id) {
    document.querySelectorAll(".doc").forEach(function (panel) {
      panel.hidden = panel.id !== id;
    });
    document.querySelectorAll(".tab").forEach(function (tab) {
      var active = tab.getAttribute("data-tab") === id;
      tab.classList.toggle("active", active);
      tab.setAttribute("aria-selected", active ? "true" : "false");
    });
  }

  function tabOf(element) {
    var panel = element.closest(".doc");
    return panel ? panel.id : null;
  }

  function place() {
    // Sizes come from data attributes (percent of the page) so no inline style is needed.
    document.querySelectorAll(".page").forEach(function (page) {
      page.style.aspectRatio = "1 / " + page.getAttribute("data-ratio");
    });
    document.querySelectorAll(".field-box").forEach(function (box) {
      box.style.left = box.getAttribute("data-left") + "%";
      box.style.top = box.getAttribute("data-top") + "%";
      box.style.width = box.getAttribute("data-width") + "%";
      box.style.height = box.getAttribute("data-height") + "%";
    });
  }

  // The value is drawn in the signed PDF no larger than the box allows and shrunk to fit its
  // width; the box on the screen does the same, so what fits here fits there (a value too long
  // even then is refused with a message when completing).
  function fitText(box) {
    if (!box.clientHeight) {
      return; // on a hidden tab: fitted when shown (the observer below)
    }
    var size = Math.max(8, Math.min(16, box.clientHeight * 0.6));
    box.style.fontSize = size + "px";
    while (box.scrollWidth > box.clientWidth && size > 6) {
      size -= 0.5;
      box.style.fontSize = size + "px";
    }
  }

  function countFilled() {
    var filled = 0;
    document.querySelectorAll(".field-box[required]").forEach(function (box) {
      if (box.value.trim() !== "") {
        filled += 1;
      }
    });
    var counter = document.getElementById("filled-count");
    if (counter) {
      counter.textContent = String(filled);
    }
  }

  var ZOOMS = [0.5, 0.75, 1, 1.25, 1.5, 2, 3];

  // Page navigation and zoom, one toolbar per document. Zooming widens the pages (the boxes are
  // placed in percent, so they follow) and tells the browser the new displayed width, so it
  // picks a sharper image from the srcset.
  function viewer(panel) {
    var tools = panel.querySelector(".viewer-tools");
    var pages = panel.querySelector(".pages");
    if (!tools || !pages) {
      return;
    }
    var count = Number(tools.getAttribute("data-pages"));
    var jump = tools.querySelector(".page-jump");
    var level = tools.querySelector(".zoom-level");
    var zoom = 2; // index of 1 in ZOOMS
    var current = 1;

    function goTo(number) {
      var target = Math.min(Math.max(1, number), count);
      var page = pages.querySelector('.page[data-page="' + target + '"]');
      if (page) {
        page.scrollIntoView({ block: "start" });
      }
      current = target;
      jump.value = String(target);
    }

    function setZoom(index) {
      zoom = Math.min(Math.max(0, index), ZOOMS.length - 1);
      pages.style.setProperty("--zoom", String(ZOOMS[zoom]));
      level.textContent = Math.round(ZOOMS[zoom] * 100) + "%";
      var shown = Math.round(pages.clientWidth * ZOOMS[zoom]) + "px";
      pages.querySelectorAll("img").forEach(function (img) {
        img.sizes = shown;
      });
      goTo(current);
    }

    tools.querySelectorAll("[data-page-step]").forEach(function (button) {
      button.addEventListener("click", function () {
        goTo(current + Number(button.getAttribute("data-page-step")));
      });
    });
    tools.querySelectorAll("[data-zoom-step]").forEach(function (button) {
      button.addEventListener("click", function () {
        setZoom(zoom + Number(button.getAttribute("data-zoom-step")));
      });
    });
    jump.addEventListener("change", function () {
      goTo(Number(jump.value) || 1);
    });
    if ("IntersectionObserver" in window) {
      // The page crossing the middle of the window is the current one.
      var observer = new IntersectionObserver(function (entries) {
        entries.forEach(function (entry) {
          if (entry.isIntersecting) {
            current = Number(entry.target.getAttribute("data-page"));
            jump.value = String(current);
          }
        });
      }, { rootMargin: "-45% 0px -50% 0px" });
      pages.querySelectorAll(".page").forEach(function (page) {
        observer.observe(page);
      });
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    place();
    countFilled();
    document.querySelectorAll(".doc").forEach(viewer);
    document.querySelectorAll(".tab").forEach(function (tab) {
      tab.addEventListener("click", function () {
        showTab(tab.getAttribute("data-tab"));
      });
    });
    document.querySelectorAll(".check-item").forEach(function (item) {
      item.addEventListener("click", function (event) {
        event.preventDefault();
        showTab(item.getAttribute("data-tab"));
        var box = document.getElementById(item.getAttribute("data-field"));
        if (box) {
          box.scrollIntoView({ block: "center" });
          box.focus();
        }
      });
    });
    document.querySelectorAll(".field-box").forEach(function (box) {
      box.addEventListener("input", countFilled);
      box.addEventListener("input", function () { fitText(box); });
      fitText(box);
    });
    if ("ResizeObserver" in window) {
      // Zoom, a turned phone, a tab shown: the boxes change size, their text follows.
      var resized = new ResizeObserver(function (entries) {
        entries.forEach(function (entry) { fitText(entry.target); });
      });
      document.querySelectorAll(".field-box").forEach(function (box) { resized.observe(box); });
    }

    var form = document.getElementById("complete-form");
    var completeButton = document.getElementById("complete-button");
    var confirmDialog = document.getElementById("confirm-dialog");
    if (completeButton && form && confirmDialog) {
      completeButton.addEventListener("click", function () {
        var boxes = Array.prototype.slice.call(form.elements);
        var invalid = boxes.filter(function (el) {
          return el.classList && el.classList.contains("field-box") && !el.checkValidity();
        });
        if (invalid.length > 0) {
          showTab(tabOf(invalid[0]));
          invalid[0].reportValidity();
          return;
        }
        confirmDialog.showModal();
      });
      form.addEventListener("submit", function () {
        var confirmButton = document.getElementById("confirm-complete");
        if (confirmButton) {
          // A second click would only be refused by the server; avoid the confusion.
          window.setTimeout(function () { confirmButton.disabled = true; }, 0);
        }
      });
    }
    [["decline-button", "decline-dialog"], ["forward-button", "forward-dialog"]].forEach(
      function (pair) {
        var button = document.getElementById(pair[0]);
        var dialog = document.getElementById(pair[1]);
        if (button && dialog) {
          button.addEventListener("click", function () { dialog.showModal(); });
        }
      }
    );
    // Staff pages: forms that change a contract for good (send, cancel) ask first.
    document.querySelectorAll("form[data-confirm]").forEach(function (confirmed) {
      confirmed.addEventListener("submit", function (event) {
        if (!window.confirm(confirmed.getAttribute("data-confirm"))) {
          event.preventDefault();
        }
      });
    });
    document.querySelectorAll("[data-close]").forEach(function (button) {
      button.addEventListener("click", function () {
        button.closest("dialog").close();
      });
    });
  });
})();
